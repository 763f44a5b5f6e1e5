"""The image side: a bare linear patch projection, a small ViT, or a frozen local Hugging Face encoder.

Every encoder maps images to patch features [N, n_patches, width] (no CLS token is passed on).
Images arrive as the data loader ships them, uint8 [N, H, W, 3], and are normalised here, on the
model's device (`pixels`): the world's encoders see (x/255 - 0.5)/0.5, a Hugging Face encoder its
processor's mean and std. Float32 [N, 3, H, W] images (evaluation items, synthetic batches) are
already in the world's [-1, 1] convention. Parameter counts match
`models.accounting.vision_param_count` for `patch` and `vit`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.config import VisionConfig


def pixels(images: torch.Tensor, mean: torch.Tensor | None = None,
           std: torch.Tensor | None = None, size: int = 0) -> torch.Tensor:
    """Encoder input float32 [N, 3, H, W] from uint8 [N, H, W, 3] (or float [-1, 1] NCHW, as is).

    uint8 images not `size` pixels square (a `resize = "device"` source) are resized here first,
    bicubic with antialiasing (torch's PIL-matching mode), rounded and clipped to 0–255 as PIL's
    resize is. Without `mean`/`std`: the world's convention, x·(2/255) − 1 (bit for bit what the
    data layer computed in float32 before images travelled as uint8). With them (a Hugging Face
    encoder): the processor's rescale then normalise, (x/255 − mean)/std; a float [-1, 1] input is
    mapped back to [0, 1] first.
    """
    if images.dtype == torch.uint8:
        x = images.permute(0, 3, 1, 2).float()
        if size and tuple(x.shape[2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                              align_corners=False).round_().clamp_(0, 255)
        if mean is None:
            return x * (2.0 / 255.0) - 1.0
        return (x * (1.0 / 255.0) - mean) / std
    if mean is None:
        return images
    return ((images + 1.0) * 0.5 - mean) / std


class PatchEncoder(nn.Module):
    """The paper's no-encoder ablation: one trained linear map from each C·p·p patch to `width`."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_size, self.image_size = cfg.patch_size, cfg.image_size
        self.proj = nn.Linear(cfg.channels * cfg.patch_size ** 2, cfg.width)
        self.out_width = cfg.width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        images = pixels(images, size=self.image_size)
        n, c, h, w = images.shape
        patches = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return self.proj(patches.reshape(n, (h // p) * (w // p), c * p * p))


class ViTBlock(nn.Module):
    """Pre-LN transformer block with biases (the standard ViT/SigLIP layout)."""

    def __init__(self, width: int, n_heads: int, mlp_width: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, w // self.n_heads).unbind(2)
        mask = None if key_padding is None else key_padding[:, None, None, :]
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, w))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Conv patch embedding + learned position per patch (no CLS) + pre-LN blocks + final LayerNorm."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.width, cfg.patch_size, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches, cfg.width))
        self.blocks = nn.ModuleList(ViTBlock(cfg.width, cfg.n_heads, cfg.mlp_width)
                                    for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.out_width = cfg.width
        if not self.pos_embed.is_meta:
            nn.init.normal_(self.pos_embed, 0.0, 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels(images, size=self.image_size)).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class HFEncoder(nn.Module):
    """A pretrained vision tower from a local Hugging Face directory (SigLIP, CLIP, …); never a hub."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel
        except ImportError as exc:  # optional extra
            raise ImportError("vision kind 'hf' needs transformers: pip install 'vlmsweep[hf]'") from exc
        path = Path(cfg.hf_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"vision.hf_path {path}: no config.json (a local HF directory is needed)")
        hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        hf_cfg = getattr(hf_cfg, "vision_config", hf_cfg)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = getattr(model, "vision_model", model)
        self.out_width = int(hf_cfg.hidden_size)
        self.n_patches = (int(hf_cfg.image_size) // int(hf_cfg.patch_size)) ** 2
        self.image_size = int(hf_cfg.image_size)
        if int(hf_cfg.image_size) != cfg.image_size:
            raise ValueError(f"vision.image_size {cfg.image_size} differs from {path}/config.json "
                             f"image_size {hf_cfg.image_size}")
        mean, std = _hf_normalisation(path)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels(images, self.mean, self.std, self.image_size)).last_hidden_state
        return out[:, -self.n_patches:]  # CLIP-style towers prepend a CLS token: drop it


def _hf_normalisation(path: Path) -> tuple[list[float], list[float]]:
    """The pixel mean/std of the directory's preprocessor_config.json (identity when absent)."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    cfg = json.loads(file.read_text())
    return list(cfg.get("image_mean", [0.0] * 3)), list(cfg.get("image_std", [1.0] * 3))


def build_vision(cfg: VisionConfig) -> nn.Module:
    """The encoder for a config; frozen encoders get requires_grad=False (the VLM runs them in eval)."""
    encoder: nn.Module = {"patch": PatchEncoder, "vit": ViT, "hf": HFEncoder}[cfg.kind](cfg)
    if cfg.frozen:
        encoder.requires_grad_(False)
    return encoder
