"""What a study costs on GPUs: GPU-hours per kind and scale at the MFU its presets were measured
at, the study's total, and its makespan with each step on its configured nodes × GPUs.

The MFU figures are `benchmarks/gpu_mfu.py` runs (bf16, torch.compile, one GPU, the paper
study's micro-batches; peak 989 TFLOP/s dense bf16 for both cards): on an H100 and an H200 those
of docs/gpu.md and docs/measurements.md. A scale measured on one card only borrows that card's
figure and says so; the CPU presets were never measured (no GPU-hours). A step on N GPUs is
assumed to run N times as fast (DDP at these sizes scales near linearly; benchmarks/ddp_scaling.py
measures it), and an eval step (a forward pass per item) is not priced.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from sweep.errors import UserError

PEAK_FLOPS = {"h100": 989e12, "h200": 989e12}  # dense bf16, SXM
GPUS = tuple(PEAK_FLOPS)
SOURCES = {"h100": "docs/gpu.md (benchmarks/gpu_mfu.py, one H100)",
           "h200": "docs/measurements.md (benchmarks/gpu_mfu.py, one H200)"}
MEASURED_MFU = {  # scale → GPU → model FLOP utilisation
    "79m": {"h100": 0.403, "h200": 0.446},
    "154m": {"h100": 0.358},
    "411m": {"h100": 0.481, "h200": 0.535},
    "1.4b": {"h100": 0.536},
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Rate:
    """The MFU a scale is priced at and where the figure comes from."""

    mfu: float
    gpu: str  # the card it was measured on
    source: str

    def gpu_hours(self, flops: float, gpu: str) -> float:
        return flops / (self.mfu * PEAK_FLOPS[gpu]) / 3600.0


def rate_for(scale: str, gpu: str) -> Rate | None:
    """The measured rate of `scale` on `gpu`, else on the other card; None if never measured."""
    measured = MEASURED_MFU.get(scale, {})
    card = gpu if gpu in measured else next(iter(measured), None)
    if card is None:
        return None
    return Rate(mfu=measured[card], gpu=card, source=SOURCES[card])


def step_gpus(plan: Any, step: Any) -> int:
    """GPUs one step holds: its SLURM ranks (one per GPU)."""
    return plan.study.backend.slurm_for(step.kind, str(step.meta.get("scale", ""))).ranks


def step_hours(plan: Any, step: Any, gpu: str, flops: int | None) -> float | None:
    """GPU-hours of one step, or None when its scale was never measured or its FLOPs unknown."""
    if step.kind == "eval":
        return 0.0
    rate = rate_for(str(step.meta.get("scale", "")), gpu)
    if rate is None or flops is None:
        return None
    return rate.gpu_hours(flops, gpu)


def makespan_hours(plan: Any, hours: dict[str, float], gpus: dict[str, int],
                   capacity: int | None = None) -> float:
    """Wall-clock hours for the DAG when each step holds its GPUs for hours/GPUs, a step starts as
    soon as its parents are done and (with `capacity`) enough GPUs are free, earliest in the plan's
    order first. Without a capacity it is the longest chain of the DAG."""
    # (id, parent ids, GPUs held): a step's id is a hash, computed once here.
    pending = [(sid, [p for _, p in s.parents], gpus[sid] if hours[sid] else 0)
               for s in plan.steps for sid in (s.step_id,)]
    running: list[tuple[float, str, int]] = []  # (end, id, GPUs)
    finished: set[str] = set()
    now, free = 0.0, float("inf") if capacity is None else capacity
    while pending or running:
        waiting = []
        for sid, parents, need in pending:
            if need <= free and all(p in finished for p in parents):
                free -= need
                heapq.heappush(running, (now + hours[sid] / max(1, gpus[sid]), sid, need))
            else:
                waiting.append((sid, parents, need))
        pending = waiting
        if not running:  # nothing can start: a parent outside the plan (cannot happen)
            break
        now, sid, need = heapq.heappop(running)
        finished.add(sid)
        free += need
    return now


def study_gpu_hours(plan: Any, costs: dict[str, Any], gpu: str = "h100",
                    capacity: int | None = None) -> dict[str, Any]:
    """GPU-hours per (kind, scale), the total, and the makespan; `costs` maps step_id → StepCost."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    hours: dict[str, float] = {}
    gpus: dict[str, int] = {}
    unpriced = 0
    for step in plan.steps:
        scale, sid = str(step.meta.get("scale", "-")), step.step_id
        h = step_hours(plan, step, gpu, costs[sid].flops)
        gpus[sid] = step_gpus(plan, step)
        rate = rate_for(scale, gpu)
        row = rows.setdefault((step.kind, scale), {
            "kind": step.kind, "scale": scale, "gpu_hours": 0.0, "gpus_per_step": gpus[sid],
            "mfu": rate.mfu if rate else None, "measured_on": rate.gpu if rate else None,
            "source": rate.source if rate else None})
        if h is None:
            unpriced += 1
            row["gpu_hours"] = None
        elif row["gpu_hours"] is not None:
            row["gpu_hours"] += h
        hours[sid] = h or 0.0
        if capacity is not None and h and gpus[sid] > capacity:
            raise UserError(f"--gpus {capacity} is fewer than the {gpus[sid]} GPUs a {step.kind} "
                            f"step of scale {scale} takes")
    return {"gpu": gpu, "peak_flops": PEAK_FLOPS[gpu], "rows": list(rows.values()),
            "total_gpu_hours": sum(hours.values()), "unpriced_steps": unpriced,
            "makespan_hours": makespan_hours(plan, hours, gpus, capacity), "capacity_gpus": capacity}
