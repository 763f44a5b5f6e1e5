"""The vision-language model: image features (vision → projector) spliced into the LM's input.

Each run of `image_tokens` consecutive `image_id` positions, in row-major order, is replaced by one
image's projected patch features (the LLaVA / nanoVLM way). Without a vision side (a text-only
trunk) the model is just the LM. Losses are split by `loss_kind` for the metrics.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.config import LMConfig, ProjectorConfig, VisionConfig
from models.lm import DecoderLM
from models.projector import build_projector
from models.vision import build_vision

IGNORE = -100
LOSS_NAMES = {0: "text_loss", 1: "caption_loss", 2: "instruction_loss"}


class VLM(nn.Module):
    def __init__(self, lm: LMConfig, vision: VisionConfig | None = None,
                 projector: ProjectorConfig | None = None) -> None:
        super().__init__()
        self.lm = DecoderLM(lm)
        self.vision_config = vision
        self.vision: nn.Module | None = None
        self.projector: nn.Module | None = None
        if vision is not None:
            self.vision = build_vision(vision)
            self.projector = build_projector(projector or ProjectorConfig(),
                                             self.vision.out_width, lm.d_model)

    @property
    def vision_frozen(self) -> bool:
        return self.vision_config is not None and self.vision_config.frozen

    def train(self, mode: bool = True) -> "VLM":
        super().train(mode)
        if self.vision is not None and self.vision_frozen:
            self.vision.eval()  # a frozen encoder keeps inference behaviour (e.g. HF dropout)
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        assert self.vision is not None and self.projector is not None
        if self.vision_frozen:
            with torch.no_grad():
                feats = self.vision(images)
        else:
            feats = self.vision(images)
        return self.projector(feats)

    def embed(self, tokens: torch.Tensor, images: torch.Tensor | None, image_id: int) -> torch.Tensor:
        embeds = self.lm.embed(tokens)
        if images is None or images.shape[0] == 0:
            return embeds
        if self.vision is None:
            raise ValueError("a batch with images reached a model without a vision side")
        feats = self.image_features(images.to(embeds.device))
        mask = tokens == image_id
        n_slots, n_feats = int(mask.sum()), feats.shape[0] * feats.shape[1]
        if n_slots != n_feats:
            raise ValueError(f"batch has {n_slots} image positions but {images.shape[0]} images "
                             f"× {feats.shape[1]} tokens = {n_feats} image features")
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(self, tokens: torch.Tensor, images: torch.Tensor | None = None,
                image_id: int = -1) -> torch.Tensor:
        return self.lm(embeds=self.embed(tokens, images, image_id))

    def param_counts(self) -> dict[str, int]:
        """Parameters by group as the modules hold them (the same groups as models.accounting)."""
        counts: dict[str, int] = dict(self.lm.param_groups())
        counts["lm_total"] = counts["embedding"] + counts["non_embedding"]
        counts["vision"] = sum(p.numel() for p in self.vision.parameters()) if self.vision else 0
        counts["projector"] = (sum(p.numel() for p in self.projector.parameters())
                               if self.projector else 0)
        return counts


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy in float32 (0 where target is IGNORE)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                           ignore_index=IGNORE, reduction="none").view_as(targets)


def masked_targets(tokens: torch.Tensor, targets: torch.Tensor, image_id: int,
                   loss_on_image_positions: bool) -> torch.Tensor:
    """The paper puts loss on text tokens only: image positions (as input or target) get IGNORE."""
    if loss_on_image_positions:
        return targets
    return targets.masked_fill((tokens == image_id) | (targets == image_id), IGNORE)


def loss_sums(per_token: torch.Tensor, targets: torch.Tensor, loss_kind: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(loss sum over every scored position, how many there are, each data kind's (sum, count)).

    The parts stay on the device and never ask whether a kind is present (no host sync per step);
    `part_means` turns them into the per-kind means of the kinds the batch held.
    """
    scored = targets != IGNORE
    detached = per_token.detach()
    parts: dict[str, torch.Tensor] = {}
    for kind, name in LOSS_NAMES.items():
        sel = (scored & (loss_kind == kind)).to(detached.dtype)
        parts[name] = torch.stack([(detached * sel).sum(), sel.sum()])
    return per_token.sum(), scored.sum(), parts


def split_losses(per_token: torch.Tensor, targets: torch.Tensor,
                 loss_kind: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss over every scored position, and each data kind's (loss sum, position count)."""
    total, count, parts = loss_sums(per_token, targets, loss_kind)
    return total / count.clamp(min=1), parts


def part_means(parts: dict[str, Any]) -> dict[str, float]:
    """Host values of a step's parts: a (sum, count) pair becomes sum / count, absent if count is 0."""
    out: dict[str, float] = {}
    for name, value in parts.items():
        v = value.tolist() if isinstance(value, torch.Tensor) else value
        if isinstance(v, list):
            if v[1] > 0:
                out[name] = v[0] / v[1]
        else:
            out[name] = float(v)
    return out
