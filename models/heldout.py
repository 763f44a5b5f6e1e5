"""Held-out validation losses at every eval: the evaluated model's mean next-token loss on a fixed
held-out text set of its trunk's text source, and (VLMs) on the captions of fixed held-out
image-caption pairs of its branch's image source, the loss taken as in training (text tokens only).

Scaling laws want smooth quantities; accuracies on a few hundred items are not. The rows go into
evals.parquet beside the accuracies under their own metric name (models.stepfiles spells it), so
that no stable-score average ever counts them.
"""

from __future__ import annotations

from typing import Any

import torch

from models.stages.batches import to_tensors
from models.stepfiles import HELDOUT_TASKS, LOSS_METRIC
from models.steps import load_step_config
from models.vlm import VLM, masked_targets, token_losses


@torch.no_grad()
def mean_loss(model: VLM, batches: list[Any], image_id: int, device: torch.device) -> tuple[float, int]:
    """Mean loss over every scored position of the batches, and how many positions that is."""
    total, count = 0.0, 0
    for batch in batches:
        b = to_tensors(batch)
        tokens = b["tokens"].to(device)
        targets = masked_targets(tokens, b["targets"].to(device), image_id, False)
        images = b["images"].to(device) if "images" in b else None
        losses = token_losses(model(tokens, images, image_id), targets)
        total += float(losses.sum())
        count += int((targets != -100).sum())
    return total / max(count, 1), count


def heldout_sources(root: Any, kind: str, parent_id: str) -> tuple[Any, Any]:
    """(trunk config, branch config or None) behind the evaluated step: whose sources to measure on."""
    config, parents = load_step_config(root, kind, parent_id)
    if kind == "finetune":
        return heldout_sources(root, "branch", dict(parents)["branch"])
    if kind == "branch":
        return load_step_config(root, "trunk", dict(parents)["trunk"])[0], config
    return config, None


def heldout_rows(model: VLM, data: Any, tok: Any, *, root: Any, kind: str, parent_id: str,
                 image_tokens: int, device: torch.device) -> list[dict[str, Any]]:
    """The evals rows of the held-out losses (none for a source with no held-out set)."""
    was_training = model.training
    model.eval()
    trunk, branch = heldout_sources(root, kind, parent_id)
    sets = {"heldout_text": data.heldout_text(trunk.data, tok, seq_len=trunk.train.seq_len)}
    if branch is not None:
        sets["heldout_caption"] = data.heldout_captions(
            branch.image_data, tok, seq_len=branch.train.image_stage_seq_len,
            image_size=branch.vision.image_size, image_tokens=image_tokens)
    rows = []
    for task, batches in sets.items():
        if batches:
            loss, n = mean_loss(model, batches, tok.image_id, device)
            rows.append({"task": task, "group": HELDOUT_TASKS[task], "metric": LOSS_METRIC,
                         "value": loss, "chance": None, "n": n, "primary_metric": False})
    model.train(was_training)
    return rows
