"""The `encoder` stage: SigLIP-style contrastive pre-training of a small ViT on image-caption pairs.

A caption tower (used only here) and the ViT are trained with the pairwise sigmoid loss (Zhai et
al., 2023); the ViT is then saved and, like the paper's SigLIP, loaded frozen by branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import OptimConfig, VisionConfig
from models.schedules import Schedule
from models.stages.module import StageModule
from models.vision import ViT, ViTBlock

MAX_CAPTION_LEN = 32  # caption tokens the tower reads (the world's captions are shorter)


class TextTower(nn.Module):
    """A small bidirectional transformer over caption tokens, mean-pooled over non-pad positions."""

    def __init__(self, vocab_size: int, width: int, layers: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(1, MAX_CAPTION_LEN, width) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(width, max(1, width // 32), 4 * width)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens[:, :MAX_CAPTION_LEN]
        keep = tokens != self.pad_id
        x = self.embed(tokens) + self.pos[:, :tokens.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding=keep)
        x = self.norm(x)
        weights = keep.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


class ContrastiveModel(nn.Module):
    def __init__(self, vision: VisionConfig, vocab_size: int, text_width: int, text_layers: int,
                 pad_id: int) -> None:
        super().__init__()
        if vision.kind != "vit":
            raise ValueError(f"the encoder step pre-trains a vit, not vision kind {vision.kind!r}")
        self.vision = ViT(vision)
        self.text = TextTower(vocab_size, text_width, text_layers, pad_id)
        self.image_head = nn.Linear(vision.width, vision.width)
        self.text_head = nn.Linear(text_width, vision.width)
        # SigLIP's initial temperature log(10) and bias −10 keep early positives/negatives balanced.
        self.log_scale = nn.Parameter(torch.tensor(2.302585))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """The sigmoid loss over all image-caption pairs in the batch (positives on the diagonal)."""
        zi = F.normalize(self.image_head(self.vision(images).mean(1)), dim=-1)
        zt = F.normalize(self.text_head(self.text(captions)), dim=-1)
        logits = zi @ zt.T * self.log_scale.exp() + self.bias
        labels = 2 * torch.eye(len(logits), device=logits.device) - 1
        return -F.logsigmoid(labels * logits).sum() / len(logits)


class EncoderModule(StageModule):
    def __init__(self, model: ContrastiveModel, schedule: Schedule, *, optim: OptimConfig,
                 samples_per_step: int, start_step: int = 0) -> None:
        super().__init__(model, schedule, optim=optim, tokens_per_step=samples_per_step,
                         start_step=start_step)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.model(batch["images"], batch["tokens"])
        return loss, {"encoder_loss": loss.detach()}
