"""The fixed (non-axis) sections of a study that shape what steps compute: [train], [encoder],
[finetune], [eval] ([backend], which never does, is `sweep.backendsettings`).

Each is a frozen dataclass with documented defaults and a `read_*` function that validates its
TOML table; they reach the step ids through the step configs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from models.config import TrainDefaults
from models.data.evaltasks import declared_task_names
from models.data.prompts import template_problem
from models.data.world.bench import GENERATE_TASKS, VL_TASKS
from models.harness import HARNESSES, LM_EVAL, OWN, lm_eval_missing
from models.metrics import METRIC_NAMES
from models.stepfiles import STABLE_DEFINITIONS
from models.steps import DataSource
from sweep.reader import Table, check_str

_TRAIN_OVERRIDES = ("lr", "warmup_steps", "batch_size", "seq_len", "image_seq_len",
                    "min_lr_ratio", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip", "z_loss")
_INT_OVERRIDES = ("warmup_steps", "batch_size", "seq_len", "image_seq_len")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSettings:
    trunk_tokens_per_param: float = 20.0  # T = this × the LM's parameters (Chinchilla: 20)
    image_tokens_per_param: float = 20.0  # image-stage length (the paper: ≈ 20, 28B at 1.4B)
    instruction_data: str = "world"  # instruction source mixed into the image part (instruction_share)
    on_bad_record: str = "error"  # error | skip (counted in the step's metrics)
    loss_on_image_positions: bool = False  # the paper puts loss on text tokens only
    # One text-only trunk per scale for every seed (its seed): the seed axis then varies the image
    # stage, the fine-tune and the eval items, as the paper's branches share one trunk. None: each
    # seed trains its own trunk.
    trunk_seed: int | None = None
    overrides: tuple[tuple[str, Any], ...] = ()  # [train] lr, warmup_steps, … for every scale
    per_scale: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # [train.scale.NAME]
    # What a training step does with a non-finite loss or gradient norm, and what a loss spike is:
    # `models.config.RunOptions` fields (how a step runs, not in its id: raising the allowance after
    # a `diverged` failure and `run --retry-failed` resumes the same step). Defaults there.
    guard: tuple[tuple[str, Any], ...] = ()

    def run_options(self) -> dict[str, Any]:
        """The RunOptions fields the study sets for its training steps (only those it sets)."""
        return dict(self.guard)

    def apply(self, scale: str, defaults: TrainDefaults) -> TrainDefaults:
        merged = dict(self.overrides) | dict(dict(self.per_scale).get(scale, ()))
        return replace(defaults, **merged) if merged else defaults


def _read_overrides(t: Table) -> tuple[tuple[str, Any], ...]:
    out = []
    for key in _TRAIN_OVERRIDES:
        if t.has(key):
            if key in _INT_OVERRIDES:
                lo = 0 if key in ("warmup_steps", "image_seq_len") else 1
                out.append((key, t.int(key, lo=lo)))
            elif key == "lr":
                out.append((key, t.float(key, lo=0.0, lo_open=True)))
            else:
                out.append((key, t.float(key, lo=0.0, hi=1.0 if key not in ("grad_clip", "min_lr") else None)))
    return tuple(out)


def _read_guard(t: Table) -> tuple[tuple[str, Any], ...]:
    """`on_nonfinite = {skip_batches = N, rewinds = M}` and `loss_spike = {factor = k, window = W}`."""
    out = []
    for key, fields in (("on_nonfinite", (("skip_batches", "nonfinite_skip_batches"),
                                          ("rewinds", "nonfinite_rewinds"))),
                        ("loss_spike", (("factor", "spike_factor"), ("window", "spike_window")))):
        if not t.has(key):
            continue
        if not isinstance(t.raw(key), dict):
            raise t.error(key, f"expected a table such as {key} = {{{fields[0][0]} = ..}}, got {t.raw(key)!r}")
        sub = t.table(key)
        for name, option in fields:
            if sub.has(name):
                value = (sub.float(name, lo=1.0, lo_open=True) if name == "factor"
                         else sub.int(name, lo=2 if name == "window" else 0))
                out.append((option, value))
        sub.finish()
    return tuple(out)


def read_train(t: Table, scales: tuple[str, ...], data: dict[str, DataSource]) -> TrainSettings:
    per_scale = []
    scale_table = t.table("scale")
    for name in list(scale_table.data):
        if name not in scales:
            raise scale_table.error(name, f"is not on the scale axis ({', '.join(scales)})")
        sub = scale_table.table(name)
        per_scale.append((name, _read_overrides(sub)))
        sub.finish()
    scale_table.finish()
    settings = TrainSettings(
        trunk_tokens_per_param=t.float("trunk_tokens_per_param", 20.0, lo=0.0, lo_open=True),
        image_tokens_per_param=t.float("image_tokens_per_param", 20.0, lo=0.0, lo_open=True),
        instruction_data=_source(t, "instruction_data", data, ("world", "llava")),
        on_bad_record=t.str("on_bad_record", "error", choices=("error", "skip")),
        loss_on_image_positions=t.bool("loss_on_image_positions", False),
        trunk_seed=t.int("trunk_seed", lo=0) if t.has("trunk_seed") else None,
        overrides=_read_overrides(t), per_scale=tuple(per_scale), guard=_read_guard(t))
    t.finish()
    return settings


@dataclass(frozen=True, kw_only=True, slots=True)
class EncoderSettings:
    """Contrastive pre-training of the small ViT (only for vision kind vit with pretrain = true)."""

    data: str = "world"  # image-caption source
    samples: int = 20_000  # image-caption pairs seen
    batch_size: int = 64
    lr: float = 1e-3
    text_width: int = 64  # caption tower used only by the encoder step
    text_layers: int = 2
    seed: int = 0  # one frozen encoder for the whole study, like the paper's one SigLIP


def read_encoder(t: Table, data: dict[str, DataSource]) -> EncoderSettings:
    s = EncoderSettings(data=_source(t, "data", data, ("world", "webdataset", "parquet_images")),
                        samples=t.int("samples", 20_000, lo=1),
                        batch_size=t.int("batch_size", 64, lo=2), lr=t.float("lr", 1e-3, lo=0.0, lo_open=True),
                        text_width=t.int("text_width", 64, lo=8), text_layers=t.int("text_layers", 2, lo=1),
                        seed=t.int("seed", 0, lo=0))
    t.finish()
    return s


@dataclass(frozen=True, kw_only=True, slots=True)
class FinetuneSettings:
    data: str = "world"  # instruction (LLaVA-style) source
    samples: int = 2_000  # records per epoch (0 = the whole source; then tokens are unknown at plan time)
    lr: float = 3e-4  # without replay, 1e-3 erased what a 1M-parameter model knew (arithmetic 0.79 → 0)
    batch_size: int = 16  # conversations per batch
    text_replay: float = 0.0  # share of each batch's rows that are the cell's text data (< 1)


def read_finetune(t: Table, data: dict[str, DataSource]) -> FinetuneSettings:
    s = FinetuneSettings(data=_source(t, "data", data, ("world", "llava")),
                         samples=t.int("samples", 2_000, lo=0), lr=t.float("lr", 3e-4, lo=0.0, lo_open=True),
                         batch_size=t.int("batch_size", 16, lo=1),
                         text_replay=t.float("text_replay", 0.0, lo=0.0, hi=0.9))
    t.finish()
    return s


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalSettings:
    data: tuple[str, ...] = ("world",)  # benchmark sources; a task name may appear in one only
    n_per_task: int = 200  # held-out items per task (0 = all)
    tasks: tuple[str, ...] = ()  # empty = every task the sources have
    pretrained: bool = True  # also evaluate each branch before fine-tuning
    trunk_checkpoints: bool = True  # evaluate the trunk (text tasks) at every intro fraction
    stable_metric: tuple[tuple[str, str], ...] = ()  # task → metric its stable score uses (acc_norm, …)
    chance: tuple[tuple[str, float], ...] = ()  # task → chance level, over what its source says
    prompt: tuple[tuple[str, str], ...] = ()  # task → template with {question} (default: its family's)
    max_new_tokens: tuple[tuple[str, int], ...] = ()  # task → greedy decoding limit (default 128)
    stable_score: str = "difference"  # score − chance, or "centered": divided by 1 − chance (DCLM's)
    # who scores text multiple-choice tasks: "vlmsweep" (the project's scorer) or "lm-eval"
    # (lm-evaluation-harness, the `lmeval` extra; the paper's text scores)
    text_harness: str = OWN
    num_fewshot: tuple[tuple[str, int], ...] = ()  # task → examples before each question (default 0)


EVAL_KINDS = ("world", "vqa_jsonl", "mc_jsonl")


def read_eval(t: Table, data: dict[str, DataSource]) -> EvalSettings:
    names = t.raw("data", "world")
    if isinstance(names, list):
        names = t.list("data", lambda v, k: _source(t, k, data, EVAL_KINDS, v))
        if len(set(names)) != len(names):
            raise t.error("data", f"lists a source twice: {names!r}")
    else:
        names = [_source(t, "data", data, EVAL_KINDS)]
    s = EvalSettings(data=tuple(names), n_per_task=t.int("n_per_task", 200, lo=0),
                     tasks=tuple(t.list("tasks", lambda v, k: check_str(v, t.error, k), [], nonempty=False)),
                     pretrained=t.bool("pretrained", True),
                     trunk_checkpoints=t.bool("trunk_checkpoints", True),
                     stable_metric=_per_task(t.table("stable_metric"),
                                             lambda sub, k: sub.str(k, choices=METRIC_NAMES)),
                     chance=_per_task(t.table("chance"), lambda sub, k: sub.float(k, lo=0.0, hi=1.0)),
                     prompt=_per_task(t.table("prompt"), _template),
                     max_new_tokens=_per_task(t.table("max_new_tokens"), lambda sub, k: sub.int(k, lo=1)),
                     stable_score=t.str("stable_score", "difference", choices=STABLE_DEFINITIONS),
                     text_harness=t.str("text_harness", OWN, choices=HARNESSES),
                     num_fewshot=_per_task(t.table("num_fewshot"), lambda sub, k: sub.int(k, lo=0)))
    t.finish()
    if s.text_harness == LM_EVAL and lm_eval_missing():
        raise t.error("text_harness", lm_eval_missing())
    pooled = {task for name in s.data if data[name].option("fewshot")  # examples from a training split
              for task in declared_task_names(data[name]) or ()}
    for task, k in s.num_fewshot:
        if s.n_per_task and k >= s.n_per_task and task not in pooled:
            raise t.error(f"num_fewshot.{task}", f"{k} examples need more than {k} items per task "
                                                 f"(n_per_task is {s.n_per_task})")
    _check_task_names(t, s, data)
    _check_fewshot_kinds(t, s, data)
    return s


def _template(sub: Table, key: str) -> str:
    value = sub.str(key)
    problem = template_problem(value)
    if problem:
        raise sub.error(key, problem)
    return value


def _check_fewshot_kinds(t: Table, s: EvalSettings, data: dict[str, DataSource]) -> None:
    """Examples go before text multiple-choice questions only: not VL, not generated answers."""
    for name in s.data:
        source = data[name]
        if source.kind == "world":
            refused = list(VL_TASKS + GENERATE_TASKS)
        elif source.kind == "vqa_jsonl":
            refused = declared_task_names(source) or []
        else:
            continue
        for task, k in s.num_fewshot:
            if k > 0 and task in refused:
                raise t.error(f"num_fewshot.{task}", "few-shot examples are for text multiple-choice tasks "
                                                     "(mc_jsonl files, the world's fact_recall and story_completion)")


def _per_task(sub: Table, read: Callable[[Table, str], Any]) -> tuple[tuple[str, Any], ...]:
    values = tuple(sorted((name, read(sub, name)) for name in list(sub.data)))
    sub.finish()
    return values


def _check_task_names(t: Table, s: EvalSettings, data: dict[str, DataSource]) -> None:
    """A task in two sources is an error naming both; per-task settings must name a known task
    (checked where every source's tasks are known now: a glob may match files only later)."""
    owner: dict[str, str] = {}
    complete = True
    for name in s.data:
        found = declared_task_names(data[name])
        complete = complete and found is not None
        for task in found or ():
            if task in owner:
                raise t.error("data", f"task {task!r} is in two sources, {owner[task]!r} and {name!r}"
                                      + ("" if owner[task] != name else " (two files with one name)"))
            owner[task] = name
    fixed = [n for n, _ in s.prompt if n in owner and data[owner[n]].kind == "world"]
    if fixed:
        raise t.error("prompt", f"names task {fixed[0]!r} of the built-in world, whose prompts are fixed; "
                                "templates apply to vqa_jsonl and mc_jsonl files")
    if not complete:
        return
    for key, pairs in (("tasks", [(n, None) for n in s.tasks]), ("stable_metric", s.stable_metric),
                       ("chance", s.chance), ("prompt", s.prompt), ("max_new_tokens", s.max_new_tokens),
                       ("num_fewshot", s.num_fewshot)):
        unknown = [n for n, _ in pairs if n not in owner]
        if unknown:
            raise t.error(key, f"names task {unknown[0]!r}, which no eval source has "
                               f"(tasks: {', '.join(sorted(owner))})")


def _source(t: Table, key: str, data: dict[str, DataSource], kinds: tuple[str, ...],
            value: Any = None) -> str:
    name = t.str(key, "world") if value is None else check_str(value, t.error, key)
    if name not in data:
        raise t.error(key, f"unknown data source {name!r}; declared sources: {', '.join(data)}")
    if data[name].kind not in kinds:
        raise t.error(key, f"data source {name!r} is of kind {data[name].kind!r}; "
                           f"allowed here: {', '.join(kinds)}")
    return name
