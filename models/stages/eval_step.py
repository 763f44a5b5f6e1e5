"""The `eval` step: rebuild the parent's model from its config chain, load its weights, score it.

A trunk parent is a text-only LM (it can only take text tasks); a branch or finetune parent is
the full VLM. `EvalConfig.checkpoint` picks a trunk's intro-fraction checkpoint instead of its end.
With `text_harness = "lm-eval"` the text multiple-choice tasks are scored by lm-evaluation-harness
(`models.harness`), the rest by the project's scorer; `num_fewshot` reaches both the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from models import checkpoint as ck
from models import stepfiles as sf
from models.config import LMConfig, ProjectorConfig, VisionConfig
from models.data.evaltasks import gather
from models.data.fewshot import with_fewshot
from models.evaluate import evaluate
from models.harness import LM_EVAL
from models.harness.run import harness_scores, lm_eval_rows
from models.heldout import heldout_rows
from models.stages.context import Context, RunOutput
from models.steps import load_step_config
from models.vlm import VLM


def model_spec(root: Any, kind: str, step_id: str) -> tuple[LMConfig, VisionConfig | None,
                                                             ProjectorConfig | None, Any]:
    """(lm, vision, projector, trunk config) of a trunk, branch or finetune step."""
    config, parents = load_step_config(root, kind, step_id)
    if kind == "trunk":
        return config.lm, None, None, config
    if kind == "finetune":
        return model_spec(root, "branch", dict(parents)["branch"])
    if kind == "branch":
        tcfg, _ = load_step_config(root, "trunk", dict(parents)["trunk"])
        return tcfg.lm, config.vision, config.projector, tcfg
    raise ValueError(f"cannot evaluate a {kind} step")


def run_eval(ctx: Context) -> RunOutput:
    cfg, step = ctx.step.config, ctx.step
    if len(step.parents) != 1:
        raise ValueError(f"eval step {step.step_id} needs exactly one parent, got {step.parents}")
    kind, parent_id = step.parents[0]
    lm, vision, projector, tcfg = model_spec(ctx.root, kind, parent_id)
    if vision is None and "vl" in cfg.groups:
        raise ValueError(f"eval step {step.step_id}: a {kind} parent has no vision side, "
                         "so groups must be ('text',)")
    model = VLM(lm, vision, projector)
    if cfg.checkpoint is not None:
        if kind != "trunk":
            raise ValueError(f"eval step {step.step_id}: checkpoint is only for trunk parents")
        source = sf.step_paths(ctx.root, kind, parent_id).fraction(cfg.checkpoint)
    else:
        source = sf.step_paths(ctx.root, kind, parent_id).weights
    model.load_state_dict(ck.load_torch(source)["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    tok = ctx.data.get_tokenizer(tcfg.data)
    image_size = vision.image_size if vision is not None else 32
    n_image = projector.image_tokens(vision.n_patches) if vision is not None else 0
    tasks = gather([(bench, ctx.data.eval_tasks(bench, tok, groups=cfg.groups, tasks=cfg.tasks,
                                                n_per_task=cfg.n_per_task, image_size=image_size,
                                                seed=cfg.seed, image_tokens=n_image, prompts=cfg.prompt))
                    for bench in cfg.data], cfg.chance, cfg.max_new_tokens)
    shots = dict(cfg.num_fewshot)
    by_lm_eval = [t for t in tasks if cfg.text_harness == LM_EVAL and harness_scores(t)]
    ours = [with_fewshot(t, shots.get(t.name, 0), tok) for t in tasks if not any(t is h for h in by_lm_eval)]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        rows = evaluate(model, ours, image_id=tok.image_id,
                        image_tokens=n_image, eos_id=tok.eos_id,
                        decode=tok.decode, stop_ids=(tok.user_id,), stable_metric=dict(cfg.stable_metric))
        if by_lm_eval:
            with tempfile.TemporaryDirectory(prefix="lm-eval-") as work:
                rows += lm_eval_rows(model, tok, by_lm_eval, workdir=Path(work), num_fewshot=shots,
                                     stable_metric=dict(cfg.stable_metric))
        rows += heldout_rows(model, ctx.data, tok, root=ctx.root, kind=kind, parent_id=parent_id,
                             image_tokens=n_image, device=device)
    return RunOutput(tokens=0, flops=0, params=model.param_counts(), metrics=[], evals=rows)
