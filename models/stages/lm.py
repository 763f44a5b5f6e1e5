"""The LightningModules of the three language-model stages, sharing one `VLM`.

trunk: text-only next-token loss. branch: the image-text mix, loss on text tokens (captions and
text; image positions only if asked), trainable vision/projector parameters in their own AdamW
groups after the LM's so the trunk's optimizer state maps onto the LM's. finetune: loss on
instruction responses (and on replayed text rows, when the fine-tune mixes text back in).
"""

from __future__ import annotations

import torch

from models.data.types import LOSS_INSTRUCTION, LOSS_TEXT
from models.schedules import Schedule
from models.stages.base import OptimConfig, StageModule, decay_groups
from models.vlm import IGNORE, VLM, masked_targets, split_losses, token_losses


def scored_losses(logits: torch.Tensor, targets: torch.Tensor,
                  kinds: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return split_losses(token_losses(logits, targets), targets, kinds)


class LMStage(StageModule):
    responses_only = False  # finetune: score only instruction responses and replayed text

    def __init__(self, model: VLM, schedule: Schedule, *, optim: OptimConfig, tokens_per_step: int,
                 image_id: int, start_step: int = 0, loss_on_image_positions: bool = False) -> None:
        super().__init__(model, schedule, optim=optim, tokens_per_step=tokens_per_step,
                         start_step=start_step)
        self.image_id = image_id
        self.loss_on_image_positions = loss_on_image_positions
        self._losses = scored_losses

    def compile_model(self) -> None:
        super().compile_model()
        # The float32 cross-entropy over the vocabulary is the biggest memory traffic of a small
        # model's step; compiled, the cast, log-softmax and per-kind sums fuse.
        self._losses = torch.compile(scored_losses)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, kinds = batch["tokens"], batch["loss_kind"]
        targets = masked_targets(tokens, batch["targets"], self.image_id,
                                 self.loss_on_image_positions)
        if self.responses_only:
            targets = targets.masked_fill((kinds != LOSS_INSTRUCTION) & (kinds != LOSS_TEXT), IGNORE)
        logits = self.model(tokens, batch.get("images"), self.image_id)
        return self._losses(logits, targets, kinds)

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
