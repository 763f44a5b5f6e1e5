"""The projector from vision features to LM input embeddings: the paper's 2-layer GELU MLP, or linear,
optionally after a pixel shuffle that folds each s×s block of patches into one token (nanoVLM).

Counts match `models.accounting.projector_param_count` (biases included).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import ProjectorConfig


class PixelShuffle(nn.Module):
    """[N, g², W] patch features in row-major order → [N, (g/s)², s²·W], each s×s block one row."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.cfg = ProjectorConfig(pixel_shuffle=factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, w = x.shape
        self.cfg.image_tokens(p)  # a ValueError unless p is a square grid whose side s divides
        g, s = math.isqrt(p), self.cfg.pixel_shuffle
        x = x.view(n, g // s, s, g // s, s, w).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (g // s) ** 2, s * s * w)


def build_projector(cfg: ProjectorConfig, vision_width: int, d_model: int) -> nn.Module:
    width = vision_width * cfg.pixel_shuffle ** 2
    if cfg.kind == "linear":
        head: nn.Module = nn.Linear(width, d_model)
    else:
        hidden = cfg.hidden or d_model
        head = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, d_model))
    return head if cfg.pixel_shuffle == 1 else nn.Sequential(PixelShuffle(cfg.pixel_shuffle), head)
