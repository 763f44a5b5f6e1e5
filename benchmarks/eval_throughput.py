"""Evaluation throughput at a paper scale: questions per second of VQA generation and of
multiple-choice scoring through `models.evaluate.evaluate`, batched (`--batch` sequences a forward)
against one question at a time (batch 1, the reference), in the same process, on the same items.

The model is the 79m preset (GPT-NeoX vocabulary, a SigLIP-B/16-shaped ViT at 224 px) with random
weights: what is timed is the work, not the answers. VQA items are an image and a 16-token question
answered greedily for `--new-tokens` tokens (random weights rarely stop early: the same work both
ways); multiple-choice items are text-only, a 48-token context and four 8-token choices, as
HellaSwag's are. Both runs must give identical evals rows. Last line: `result: …`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from models.data.types import EvalItem, EvalTask
from models.evaluate import evaluate
from models.presets import get_preset
from models.vlm import VLM

IMAGE_ID, EOS_ID = 50_000, 0


def tasks(n: int, new_tokens: int, image_size: int, rng: np.random.Generator) -> tuple[EvalTask, EvalTask]:
    words = lambda k: rng.integers(1, 49_000, k).tolist()
    vqa = [EvalItem(prompt_tokens=[IMAGE_ID] + words(16), answers=["yes"], max_new_tokens=new_tokens,
                image=rng.standard_normal((3, image_size, image_size)).astype(np.float32)) for _ in range(n)]
    mc = [EvalItem(prompt_tokens=words(48), image=None, choices=[words(8) for _ in range(4)], label=0)
          for _ in range(n)]
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
    device = f"{args.device} ({args.threads} threads)" if args.device == "cpu" else args.device
    print("result: 79m eval throughput on " + device + ", batched vs one at a time: " + "; ".join(
        f"{name} {b:.2f} vs {o:.2f} q/s ({b / o:.2f}x{'' if same else ', ROWS DIFFER'})"
        for name, (b, o, same) in speeds.items()))


if __name__ == "__main__":
    main()
