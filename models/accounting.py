"""Exact parameter counts by group and training FLOPs, computed from configs alone (no torch).

The model classes in `models.lm`, `models.vision` and `models.projector` must build modules whose
`numel()` equals these counts (a test checks every preset); analysis picks which N a scaling law
uses from the groups: `embedding` (input table, plus the output head when untied), `non_embedding`
(transformer blocks and final norm), `vision`, `projector`.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.config import LMConfig, ProjectorConfig, VisionConfig, VLMConfig


def lm_param_counts(lm: LMConfig) -> dict[str, int]:
    d, h = lm.d_model, lm.ffn_dim
    embedding = lm.vocab_size * d * (1 if lm.tie_embeddings else 2)
    per_layer = 2 * d + 4 * d * d + 3 * d * h  # two norms (gains only), q/k/v/o, SwiGLU w1/w2/w3
    if lm.qk_norm:
        per_layer += 2 * d  # open_lm's q and k norms span all heads
    non_embedding = lm.n_layers * per_layer + d  # + final RMSNorm
    return {"embedding": embedding, "non_embedding": non_embedding}


def vision_out_width(vision: VisionConfig) -> int | None:
    """Feature width the projector receives (None for an hf encoder whose config is not on disk)."""
    if vision.kind == "hf":
        cfg = _hf_vision_config(vision.hf_path)
        return None if cfg is None else int(cfg["hidden_size"])
    return vision.width


def vision_param_count(vision: VisionConfig) -> int | None:
    """Parameters of the image encoder (None when an hf encoder's config.json is not readable)."""
    c, p, w = vision.channels, vision.patch_size, vision.width
    patch_embed = c * p * p * w + w
    if vision.kind == "patch":
        return patch_embed
    if vision.kind == "vit":
        m = vision.mlp_width
        per_block = 2 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * m + m) + (m * w + w)
        return patch_embed + vision.n_patches * w + vision.n_layers * per_block + 2 * w
    cfg = _hf_vision_config(vision.hf_path)
    return None if cfg is None else int(cfg.get("num_parameters", 0)) or None


def projector_param_count(projector: ProjectorConfig, vision_width: int, d_model: int) -> int:
    vision_width *= projector.pixel_shuffle ** 2  # the MLP reads s×s patches at once
    if projector.kind == "linear":
        return vision_width * d_model + d_model
    hidden = projector.hidden or d_model
    return vision_width * hidden + hidden + hidden * d_model + d_model


def param_counts(config: VLMConfig) -> dict[str, int | None]:
    """Parameters by group; `lm_total` is the N that token budgets (tokens per parameter) use."""
    counts: dict[str, int | None] = dict(lm_param_counts(config.lm))
    counts["lm_total"] = counts["embedding"] + counts["non_embedding"]  # type: ignore[operator]
    counts["vision"] = vision_param_count(config.vision)
    width = vision_out_width(config.vision)
    counts["projector"] = (None if width is None
                           else projector_param_count(config.projector, width, config.lm.d_model))
    return counts


def lm_flops_per_token(lm: LMConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6·N over every matmul (blocks and output head) plus attention.

    Attention scores and the weighted sum cost 2·2·L·d·seq_len forward per token (×3 with the
    backward pass) = 12·L·d·seq_len; PaLM's appendix B counts it the same way.
    """
    matmul_params = lm_param_counts(lm)["non_embedding"] + lm.vocab_size * lm.d_model
    return 6 * matmul_params + 12 * lm.n_layers * lm.d_model * seq_len


def train_flops(lm: LMConfig, tokens: int, seq_len: int) -> int:
    return lm_flops_per_token(lm, seq_len) * tokens


def _hf_vision_config(path: str) -> dict | None:
    """The vision part of a local Hugging Face config.json (CLIP/SigLIP nest it under vision_config)."""
    file = Path(path) / "config.json"
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("vision_config", cfg)
