"""Evaluation throughput at a paper scale: questions per second of VQA generation and of
multiple-choice scoring through `models.evaluate.evaluate`, batched (`--batch` sequences a forward)
against one question at a time (batch 1, the reference), in the same process, on the same items.

The model is the 79m preset (GPT-NeoX vocabulary, a SigLIP-B/16-shaped ViT at 224 px) with random
weights: what is timed is the work, not the answers. VQA items are an image and a 16-token question
answered greedily for `--new-tokens` tokens (random weights rarely stop early: the same work both
ways); multiple-choice items are text-only, a 48-token context and four 8-token choices, as
HellaSwag's are. Both runs must give identical evals rows. The multiple-choice items then go
through lm-evaluation-harness too (`[eval] text_harness = "lm-eval"`: `models.harness`, its LM class
batched `--batch` rows a forward, task data a local JSONL, documents loaded by `datasets`), timed
whole, and its acc/acc_norm must equal the project's. Last line: `result: …`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.data.types import EvalItem, EvalTask
from models.evaluate import evaluate
from models.presets import get_preset
from models.vlm import VLM

IMAGE_ID, EOS_ID = 50_000, 0


class IdTokenizer:
    """Token ids written as words (`t123`): the random items as text for lm-eval, ids unchanged."""

    eos_id, image_id, user_id = EOS_ID, IMAGE_ID, 50_001

    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids) -> str:
        return " ".join(f"t{int(i)}" for i in ids)


def tasks(n: int, new_tokens: int, image_size: int, rng: np.random.Generator) -> tuple[EvalTask, EvalTask]:
    words = lambda k: rng.integers(1, 49_000, k).tolist()
    vqa = [EvalItem(prompt_tokens=[IMAGE_ID] + words(16), answers=["yes"], max_new_tokens=new_tokens,
                image=rng.standard_normal((3, image_size, image_size)).astype(np.float32)) for _ in range(n)]
    tok, mc = IdTokenizer(), []
    for _ in range(n):
        context, choices = words(48), [words(8) for _ in range(4)]
        mc.append(EvalItem(prompt_tokens=context, image=None, choices=choices, label=0,
                           prompt_text=tok.decode(context), choice_texts=[tok.decode(c) for c in choices]))
    return (EvalTask(name="vqa", group="vl", kind="generate", metric="vqa", items=vqa, chance=0.0),
            EvalTask(name="mc", group="text", kind="multiple_choice", metric="multiple_choice", items=mc,
                     chance=0.25))


def timed(model: VLM, task: EvalTask, batch: int, image_tokens: int) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    rows = evaluate(model, [task], image_id=IMAGE_ID, image_tokens=image_tokens, eos_id=EOS_ID,
                    decode=lambda ids: " ".join(map(str, ids)), batch_size=batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(task.items) / (time.perf_counter() - start), rows


def timed_lm_eval(model: VLM, task: EvalTask, batch: int) -> tuple[float, list[dict]]:
    """Questions/s through lm-eval: writing the task's JSONL, loading it, scoring (imports excluded)."""
    import lm_eval.evaluator  # noqa: F401  (one-time import cost, not per eval)

    import models.harness.lm  # noqa: F401
    from models.harness.run import lm_eval_rows

    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        rows = lm_eval_rows(model, IdTokenizer(), [task], workdir=Path(work), batch_size=batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return len(task.items) / (time.perf_counter() - start), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=8, help="questions per task")
    ap.add_argument("--batch", type=int, default=8, help="sequences per forward in the batched run")
    ap.add_argument("--new-tokens", type=int, default=3, help="greedy tokens per VQA answer")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset("79m").model
    torch.manual_seed(0)
    model = VLM(preset.lm, preset.vision, preset.projector).to(args.device).eval()
    image_tokens = preset.projector.image_tokens(preset.vision.n_patches)
    vqa, mc = tasks(args.questions, args.new_tokens, preset.vision.image_size, np.random.default_rng(0))
    speeds = {}
    for task in (vqa, mc):
        one, rows_one = timed(model, task, 1, image_tokens)
        batched, rows_batched = timed(model, task, args.batch, image_tokens)
        same = all(a["metric"] == b["metric"] and abs(a["value"] - b["value"]) < 1e-9
                   for a, b in zip(rows_one, rows_batched))
        speeds[task.name] = (batched, one, same)
        print(f"{task.name}: {batched:.2f} questions/s batched ({args.batch}), {one:.2f} one at a time "
              f"({batched / one:.2f}x); same rows: {same}")
    lm_eval_speed, rows_lm_eval = timed_lm_eval(model, mc, args.batch)
    ours = {r["metric"]: r["value"] for r in rows_batched}
    agree = all(abs(r["value"] - ours[r["metric"]]) < 1e-6 for r in rows_lm_eval)
    print(f"mc through lm-eval: {lm_eval_speed:.2f} questions/s (batch {args.batch}); "
          f"acc/acc_norm equal to the project's: {agree}")
    device = f"{args.device} ({args.threads} threads)" if args.device == "cpu" else args.device
    print("result: 79m eval throughput on " + device + ", batched vs one at a time: " + "; ".join(
        f"{name} {b:.2f} vs {o:.2f} q/s ({b / o:.2f}x{'' if same else ', ROWS DIFFER'})"
        for name, (b, o, same) in speeds.items())
        + f"; mc through lm-eval {lm_eval_speed:.2f} q/s vs the project's batched {speeds['mc'][0]:.2f} "
          f"({lm_eval_speed / speeds['mc'][0]:.2f}x{'' if agree else ', SCORES DIFFER'})")


if __name__ == "__main__":
    main()
