"""The study file `vlmsweep world` writes beside the files it materialises.

Every source is one of those files (paths relative to the study file, so the folder can move): text
JSONL with the world's tokenizer.json, WebDataset pairs, LLaVA instructions, and the benchmarks as
four eval sources — VL and text, each of both file kinds (`vqa_jsonl`, `mc_jsonl`) — whose records
carry their metric and chance. The grid is small (the `debug` preset, three intro fractions) so that
it runs on a laptop in minutes; edit it like any study.
"""

from __future__ import annotations

STUDY_FILE = "study.toml"
TOKENIZER_FILE = "tokenizer.json"

_HEAD = """\
# Written by `vlmsweep world`: a study over the files in this folder (paths relative to it).
# `vlmsweep run {study}`, then `vlmsweep ingest` and `vlmsweep report` as for any study.

[study]
name = "world-{seed}"
description = "The built-in world (seed {seed}, {n_kinds} kinds) read from its real-format files"
root = "runs"

[data.text]
kind = "jsonl"
paths = ["text/*.jsonl.zst"]
tokenizer = "{tokenizer}"

[data.pairs]
kind = "webdataset"
paths = ["pairs/*.tar"]
tokenizer = "{tokenizer}"    # the encoder step's caption tower reads the captions

[data.instructions]
kind = "llava"
paths = ["llava/instructions.json"]
"""

_TAIL = """
[axes]
scale = ["debug"]
text_data = ["text"]
image_data = ["pairs"]
intro_fraction = [0.0, 0.5, 1.0]
image_ratio = [0.2]
finetune_epochs = [1]
seed = [0]

[train]
trunk_tokens_per_param = 1.0
image_tokens_per_param = 0.5
instruction_data = "instructions"

[encoder]
data = "pairs"
samples = 1024

[finetune]
data = "instructions"
samples = 64
lr = 1e-3
text_replay = 0.25

[eval]
data = [{sources}]
n_per_task = {n_per_task}
pretrained = false

[backend]
default = "local"
workers = 2
"""

# (group, reader kind) → the source's name in the study
_EVAL_SOURCES = {("vl", "vqa_jsonl"): "vl_questions", ("vl", "mc_jsonl"): "vl_choices",
                 ("text", "vqa_jsonl"): "text_questions", ("text", "mc_jsonl"): "text_choices"}


def _quoted(values) -> str:
    return ", ".join(f'"{v}"' for v in values)


def study_toml(*, seed: int, n_kinds: int, eval_items: int, formats: dict) -> str:
    """The study over a materialised world; `formats` maps each task to (reader kind, chance, group)."""
    text = _HEAD.format(study=STUDY_FILE, seed=seed, n_kinds=n_kinds, tokenizer=TOKENIZER_FILE)
    used = []
    for (group, kind), name in _EVAL_SOURCES.items():
        tasks = [t for t, (k, _, g) in formats.items() if (g, k) == (group, kind)]
        if not tasks:
            continue
        used.append(name)
        text += (f"\n[data.{name}]\nkind = \"{kind}\"\ngroup = \"{group}\"\n"
                 f"paths = [{_quoted(f'eval/{t}.jsonl' for t in tasks)}]\n")
    return text + _TAIL.format(sources=_quoted(used), n_per_task=min(8, eval_items))
