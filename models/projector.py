"""The projector from vision features to LM input embeddings: the paper's 2-layer GELU MLP, or linear.

Counts match `models.accounting.projector_param_count` (biases included).
"""

from __future__ import annotations

from torch import nn

from models.config import ProjectorConfig


def build_projector(cfg: ProjectorConfig, vision_width: int, d_model: int) -> nn.Module:
    if cfg.kind == "linear":
        return nn.Linear(vision_width, d_model)
    hidden = cfg.hidden or d_model
    return nn.Sequential(nn.Linear(vision_width, hidden), nn.GELU(), nn.Linear(hidden, d_model))
