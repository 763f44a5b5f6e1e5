"""The LightningModules of the three language-model stages, sharing one `VLM`.

trunk: text-only next-token loss. branch: the image-text mix, loss on text tokens (captions and
text; image positions only if asked), trainable vision/projector parameters in their own AdamW
groups after the LM's so the trunk's optimizer state maps onto the LM's. finetune: loss on
instruction responses (and on replayed text rows, when the fine-tune mixes text back in).
"""

from __future__ import annotations

import torch

from models.config import OptimConfig
from models.data.types import LOSS_INSTRUCTION, LOSS_TEXT
from models.schedules import Schedule
from models.stages.module import StageModule, decay_groups
from models.vlm import IGNORE, VLM, loss_sums, masked_targets, token_losses


def scored_losses(logits: torch.Tensor, targets: torch.Tensor, kinds: torch.Tensor, z_loss: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(loss sum, scored positions, parts); with z_loss > 0 the sum also holds open_lm's z-loss,
    z_loss · logsumexp(logits)² at every scored position (so the mean gains z_loss · mean(lse²)),
    and the parts a `z_loss` (sum, count) pair; the per-kind parts stay pure cross-entropy."""
    total, count, parts = loss_sums(token_losses(logits, targets), targets, kinds)
    if z_loss > 0:
        scored = (targets != IGNORE).float()
        z = (torch.logsumexp(logits.float(), dim=-1).square() * scored).sum()
        total = total + z_loss * z
        parts["z_loss"] = torch.stack([z_loss * z.detach(), scored.sum()])
    return total, count, parts


class LMStage(StageModule):
    responses_only = False  # finetune: score only instruction responses and replayed text

    def __init__(self, model: VLM, schedule: Schedule, *, optim: OptimConfig, tokens_per_step: int,
                 image_id: int, start_step: int = 0, loss_on_image_positions: bool = False,
                 z_loss: float = 0.0) -> None:
        super().__init__(model, schedule, optim=optim, tokens_per_step=tokens_per_step,
                         start_step=start_step)
        self.image_id = image_id
        self.z_loss = z_loss  # open_lm's z-loss coefficient (TrainDefaults.z_loss); 0 = off
        self.loss_on_image_positions = loss_on_image_positions
        self._losses = scored_losses

    def compile_model(self) -> None:
        super().compile_model()
        # The float32 cross-entropy over the vocabulary is the biggest memory traffic of a small
        # model's step; compiled, the cast, log-softmax and per-kind sums fuse.
        self._losses = torch.compile(scored_losses)

    def _targets(self, batch: dict) -> torch.Tensor:
        tokens, kinds = batch["tokens"], batch["loss_kind"]
        targets = masked_targets(tokens, batch["targets"], self.image_id,
                                 self.loss_on_image_positions)
        if self.responses_only:
            targets = targets.masked_fill((kinds != LOSS_INSTRUCTION) & (kinds != LOSS_TEXT), IGNORE)
        return targets

    def _loss_terms(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        targets = self._targets(batch)
        logits = self.model(batch["tokens"], batch.get("images"), self.image_id)
        return self._losses(logits, targets, batch["loss_kind"], self.z_loss)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, count, parts = self._loss_terms(batch)
        return total / count.clamp(min=1), parts

    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, _, parts = self._loss_terms(batch)
        return total, parts

    def scored_positions(self, batch: dict) -> torch.Tensor:
        return (self._targets(batch) != IGNORE).sum()

    def param_groups(self) -> list[dict]:
        decay = self.optim.weight_decay
        groups = decay_groups(list(self.model.lm.named_parameters()), decay)
        extra = [(n, p) for n, p in self.model.named_parameters() if not n.startswith("lm.")]
        if any(p.requires_grad for _, p in extra):
            groups += decay_groups(extra, decay)
        return groups


class TrunkModule(LMStage):
    """Text-only pre-training with warmup + cosine over T tokens."""


class BranchModule(LMStage):
    """Image-text pre-training resumed from a trunk checkpoint at f·T."""


class FinetuneModule(LMStage):
    """Instruction fine-tuning: loss on responses only (and on replayed text rows)."""

    responses_only = True
