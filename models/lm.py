"""The decoder-only language model: pre-norm blocks with RMSNorm (or open_lm's gain-only LayerNorm),
RoPE, SwiGLU and causal SDPA, with open_lm's optional QK-norm.

No biases anywhere, so parameter counts equal `models.accounting.lm_param_counts` exactly. The
model takes token ids or ready-made input embeddings (the VLM splices image features into them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import LMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: under bf16 autocast the mean of squares loses too many bits.
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class GainLayerNorm(nn.Module):
    """open_lm's gain_only_lp_layer_norm: LayerNorm with a gain and no bias (in float32 here)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), (x.shape[-1],), None, None, self.eps)
        return out.type_as(x) * self.weight


def make_norm(cfg: LMConfig, dim: int) -> nn.Module:
    return GainLayerNorm(dim, cfg.norm_eps) if cfg.norm == "layernorm" else RMSNorm(dim, cfg.norm_eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_len, head_dim/2] for rotating (even, odd) channel pairs."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, Dh] by position; cos/sin are [L, Dh/2]."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    rot1 = x1 * cos - x2 * sin
    rot2 = x1 * sin + x2 * cos
    return torch.stack((rot1, rot2), dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        # open_lm normalises all heads' queries (and keys) together, one d-wide norm, before RoPE.
        self.q_norm = make_norm(cfg, d) if cfg.qk_norm else nn.Identity()
        self.k_norm = make_norm(cfg, d) if cfg.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        shape = (b, n, self.n_heads, self.head_dim)
        q = self.q_norm(self.wq(x)).view(shape).transpose(1, 2)
        k = self.k_norm(self.wk(x)).view(shape).transpose(1, 2)
        v = self.wv(x).view(shape).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)  # gate
        self.w3 = nn.Linear(d, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, d, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class DecoderLM(nn.Module):
    """Token ids (or input embeddings) → next-token logits [B, L, vocab]."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Not persistent: the tables are derived from the config, so checkpoints stay weights-only.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2-style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2·layers)."""
        std = 0.02
        out_std = std / (2 * self.config.n_layers) ** 0.5
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor | None = None,
                embeds: torch.Tensor | None = None) -> torch.Tensor:
        if embeds is None:
            if tokens is None:
                raise ValueError("DecoderLM.forward needs tokens or embeds")
            embeds = self.embed(tokens)
        n = embeds.shape[1]
        if n > self.config.max_seq_len:
            raise ValueError(f"sequence of {n} tokens exceeds max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[:n], self.rope_sin[:n]
        x = embeds
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))

    def param_groups(self) -> dict[str, int]:
        """Parameter counts by group, from the modules themselves (tied weights counted once)."""
        embedding = self.embed.weight.numel()
        if not self.config.tie_embeddings:
            embedding += self.head.weight.numel()
        non_embedding = sum(p.numel() for n, p in self.named_parameters()
                            if not n.startswith(("embed.", "head.")))
        return {"embedding": embedding, "non_embedding": non_embedding}
