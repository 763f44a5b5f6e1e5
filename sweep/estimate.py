"""How long a study takes on this machine: time a short slice of its steps, then project the whole run.

`calibration_slice(plan)` picks one chain per scale (encoder, trunk, branch, fine-tune and their
evals) and shortens its training to a few optimizer steps and its evals to a few items per task;
run on this machine (in the study's worker pool, so the workers share the cores as they will),
`measured_rates` reads back each kind's setup seconds and steady seconds per token (evals: per
item) from the steps' own files. `expected_seconds` prices every step of the plan with them, and
`project` schedules those durations over the workers with the DAG's order, longest remaining chain
first (the local backend's order), so the estimate includes the workers that idle at the end.
No torch here: the demo's supervisor process imports this.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from models import stepfiles as sf
from models.steps import Step
from sweep.plan import step_cost

RateKey = tuple[str, str, tuple[str, ...]]  # (kind, scale, eval groups; () for training steps)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rate:
    """What one kind of step costs at one scale on this machine."""

    setup_s: float  # building the model, data and schedule, loading parents, writing files
    per_unit_s: float  # seconds per training token (evals: per item)


def _key(step: Step) -> RateKey:
    if step.kind == "encoder":  # encoders have no scale: one per vision tower
        vision = step.config.vision
        return "encoder", f"vit-{vision.width}x{vision.n_layers}", ()
    groups = tuple(step.config.groups) if step.kind == "eval" else ()
    return step.kind, str(step.meta.get("scale", "")), groups


def _units(step: Step) -> float | None:
    """What a step's time grows with: training tokens (encoder: samples; eval: items per task)."""
    if step.kind == "eval":
        return float(step.config.n_per_task) or None
    if step.kind == "encoder":
        return float(step.config.samples)
    return step_cost(step).tokens


def calibration_slice(steps: Sequence[Step], *, optimizer_steps: int = 12,
                      eval_items: int | None = None) -> list[Step]:
    """One chain per scale, shortened: encoder, trunk, branch and fine-tune to `optimizer_steps`
    optimizer steps; the fine-tune's eval and the trunk's eval at the branch's fraction kept (at
    `eval_items` items per task when given). The chain is the scale's first fine-tune whose branch
    continues the trunk (0 < f < 1), else its first. Shortened steps have other ids: they never touch
    the study's results."""
    by_id = {s.step_id: s for s in steps}
    finetunes: dict[str, Step] = {}
    for step in (s for s in steps if s.kind == "finetune"):
        scale, f = step.meta.get("scale"), by_id[step.parent("branch")].config.intro_fraction
        if scale not in finetunes or (0 < f < 1 and not 0 < _fraction(by_id, finetunes[scale]) < 1):
            finetunes[scale] = step
    keep: list[Step] = []
    for finetune in finetunes.values():
        branch = by_id[finetune.parent("branch")]
        chain = [by_id[pid] for _, pid in branch.parents] + [branch, finetune]
        chain += [s for s in steps if s.kind == "eval" and (
            s.parents[0][1] == finetune.step_id or (s.parents[0][1] == branch.parent("trunk")
                                                    and s.config.checkpoint == branch.config.intro_fraction))]
        keep += [s for s in chain if s not in keep]
    return _shortened(sorted(keep, key=steps.index), optimizer_steps, eval_items)


def _fraction(by_id: Mapping[str, Step], finetune: Step) -> float:
    return by_id[finetune.parent("branch")].config.intro_fraction


def _shortened(chain: list[Step], n_steps: int, eval_items: int | None) -> list[Step]:
    new_ids: dict[str, str] = {}
    out = []
    for step in chain:
        config, meta = step.config, dict(step.meta)
        if step.kind == "encoder":
            config = dataclasses.replace(config, samples=n_steps * config.batch_size)
        elif step.kind == "trunk":
            config = dataclasses.replace(config, tokens=n_steps * config.train.batch_size * config.train.seq_len)
        elif step.kind == "branch":
            config = dataclasses.replace(
                config, tokens=n_steps * config.train.batch_size * config.train.image_stage_seq_len)
        elif step.kind == "finetune":
            passes = config.max_samples * config.epochs
            config = dataclasses.replace(config, max_samples=n_steps * config.batch_size, epochs=1)
            if meta.get("tokens") and passes:  # planned tokens scale with the conversations seen
                meta["tokens"] = round(meta["tokens"] * config.max_samples / passes)
        elif step.kind == "eval" and eval_items:
            config = dataclasses.replace(config, n_per_task=min(eval_items, config.n_per_task or eval_items))
        parents = tuple((role, new_ids.get(pid, pid)) for role, pid in step.parents)
        short = Step(kind=step.kind, config=config, parents=parents, meta=meta)
        new_ids[step.step_id] = short.step_id
        out.append(short)
    return out


def measured_rates(root: str | Path, steps: Iterable[Step]) -> dict[RateKey, Rate]:
    """Each finished slice step's setup seconds and steady seconds per unit, read from its files."""
    rates = {}
    for step in steps:
        paths = sf.paths_of(root, step)
        try:
            wall = float((sf.read_result(paths.dir) or {})["wall_time_s"])
        except (KeyError, TypeError, ValueError):
            continue
        units = _units(step) or 0.0
        steady = _steady_seconds_per_unit(paths.metrics)
        if steady is None:  # evals and steps without a rate: all of the time scales with the units
            rates[_key(step)] = Rate(setup_s=0.0, per_unit_s=wall / units if units else 0.0)
        else:
            rates[_key(step)] = Rate(setup_s=max(0.0, wall - units * steady), per_unit_s=steady)
    return rates


def _steady_seconds_per_unit(metrics: Path) -> float | None:
    """1 / the median tokens/s (the encoder logs samples/s) the step logged, past its first steps."""
    if not metrics.exists():
        return None
    import polars as pl

    rows = pl.read_parquet(metrics).filter(pl.col("name") == "tokens_per_s").sort("step")
    values = [v for v in rows["value"].to_list()[2:] if v and v > 0] or \
        [v for v in rows["value"].to_list() if v and v > 0]
    if not values:
        return None
    return 1.0 / statistics.median(values)


def expected_seconds(steps: Iterable[Step], rates: Mapping[RateKey, Rate]) -> dict[str, float]:
    """Seconds each step should take at the measured rates (steps of an unmeasured kind: omitted)."""
    out = {}
    for step in steps:
        rate, units = rates.get(_key(step)), _units(step)
        if rate is not None and units is not None:
            out[step.step_id] = rate.setup_s + units * rate.per_unit_s
    return out


def critical_paths(steps: Sequence[Step], seconds: Callable[[Step], float]) -> dict[str, float]:
    """Each step's own seconds plus its longest chain of descendants: the local backend starts the
    ready step with the longest first, so no worker is left idle while one long chain finishes."""
    children: dict[str, list[str]] = {s.step_id: [] for s in steps}
    for step in steps:
        for _, pid in step.parents:
            if pid in children:
                children[pid].append(step.step_id)
    own = {s.step_id: seconds(s) for s in steps}
    path: dict[str, float] = {}
    for step in reversed(steps):  # topological order reversed: children first
        sid = step.step_id
        path[sid] = own[sid] + max((path[c] for c in children[sid]), default=0.0)
    return path


def project(steps: Sequence[Step], seconds: Mapping[str, float], workers: int,
            busy: Mapping[str, float] | None = None) -> float:
    """Seconds until every step is done: `steps` (waiting, topological order) scheduled on `workers`
    in the local backend's order; `busy` = running steps → their seconds left (each holds a worker)."""
    busy = dict(busy or {})
    known = {s.step_id for s in steps} | set(busy)
    priority = critical_paths(steps, lambda s: seconds.get(s.step_id, 0.0))
    waiting = {s.step_id: [p for _, p in s.parents if p in known] for s in steps}
    finish_at = dict(busy)  # step → when it ends
    free = [0.0] * max(0, workers - len(busy)) + list(busy.values())  # when each worker is free
    heapq.heapify(free)
    while waiting and free:
        now = heapq.heappop(free)
        ready = [sid for sid, ps in waiting.items() if all(finish_at.get(p, math.inf) <= now for p in ps)]
        if not ready:  # this worker waits for the next running parent to finish
            later = [finish_at[p] for ps in waiting.values() for p in ps if finish_at.get(p, math.inf) > now
                     and p in finish_at]
            if not later:
                break
            heapq.heappush(free, min(later))
            continue
        sid = max(ready, key=lambda s: priority[s])
        del waiting[sid]
        finish_at[sid] = now + seconds.get(sid, 0.0)
        heapq.heappush(free, finish_at[sid])
    return max(finish_at.values(), default=0.0)
