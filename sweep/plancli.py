"""`vlmsweep plan`: the study's steps per kind and scale, their cost, status and trunk savings, and
their GPU-hours and makespan (`sweep.gpuhours`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from models import stepfiles as sf
from models.data.files import local_missing
from models.presets import PRESETS
from sweep.datacheck import check_plan
from sweep.gpuhours import SOURCES, study_gpu_hours
from sweep.plan import Plan, plan_study, sharing_savings, step_cost
from sweep.spec import load_study


def run_plan(args) -> int:
    plan = plan_study(load_study(args.study), root=args.root)
    gpu, capacity = getattr(args, "gpu", "h100"), getattr(args, "gpus", None)
    if not getattr(args, "no_data_check", False):
        check_plan(plan)
    if args.json:
        print(json.dumps(plan_json(plan, gpu, capacity), sort_keys=True, indent=1))
        return 0
    print(plan_table(plan, gpu, capacity))
    if args.explain:
        print()
        print(explain(plan))
    return 0


def plan_json(plan: Plan, gpu: str = "h100", capacity: int | None = None) -> dict[str, Any]:
    """Identical across runs and roots for the same study and the same files under the root."""
    steps = []
    for s in plan.steps:
        cost = step_cost(s)
        steps.append({"step_id": s.step_id, "kind": s.kind, "parents": [list(p) for p in s.parents],
                      "config": s.to_json()["config"], "meta": s.to_json()["meta"],
                      "tokens": cost.tokens, "flops": cost.flops, "status": plan.status(s)})
    return {"study": plan.study.name, "n_cells": len(plan.study.cells), "n_steps": len(steps),
            "levels": [len(level) for level in plan.levels()],
            "savings": sharing_savings(plan), "gpu_hours": _gpu_hours(plan, gpu, capacity),
            "steps": steps}


def _gpu_hours(plan: Plan, gpu: str, capacity: int | None) -> dict[str, Any]:
    return study_gpu_hours(plan, {s.step_id: step_cost(s) for s in plan.steps}, gpu, capacity)


def _gpu_lines(plan: Plan, gpu: str, capacity: int | None) -> list[str]:
    """The GPU-hours table's rows (kind, scale) and the study's total and makespan."""
    cost = _gpu_hours(plan, gpu, capacity)
    priced = [r for r in cost["rows"] if r["kind"] != "eval" and r["mfu"] is not None]
    if not priced:
        return ["GPU-hours: no scale of this study was measured on a GPU (CPU presets)"]
    lines = [f"GPU-hours on {gpu.upper()} at the MFU each scale was measured at "
             f"(peak {cost['peak_flops'] / 1e12:.0f} TFLOP/s bf16; evals not priced):",
             f"{'kind':<9} {'scale':<6} {'GPUs/step':>9} {'MFU':>6} {'on':>4} {'GPU-hours':>10}"]
    for r in priced:
        hours = "?" if r["gpu_hours"] is None else f"{r['gpu_hours']:,.0f}"
        lines.append(f"{r['kind']:<9} {r['scale']:<6} {r['gpus_per_step']:>9} {100 * r['mfu']:>5.1f}% "
                     f"{r['measured_on'].upper():>4} {hours:>10}")
    for card in sorted({r["measured_on"] for r in priced}):
        lines.append(f"  MFU measured on {card.upper()}: {SOURCES[card]}")
    where = f"at most {capacity} GPUs at once" if capacity else "every ready step starting at once"
    lines.append(f"total {cost['total_gpu_hours']:,.0f} GPU-hours ({cost['total_gpu_hours'] / 24:,.0f} "
                 f"GPU-days); makespan {cost['makespan_hours'] / 24:,.1f} days on the configured "
                 f"nodes × GPUs per step, {where}")
    if cost["unpriced_steps"]:
        lines.append(f"({cost['unpriced_steps']} step(s) not priced: an unmeasured scale or unknown tokens)")
    return lines


def _fmt(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("Y", 1e24), ("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9),
                       ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def plan_table(plan: Plan, gpu: str = "h100", capacity: int | None = None) -> str:
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"steps": 0, "done": 0, "failed": 0, "tokens": 0, "flops": 0, "unknown": False})
    for s in plan.steps:
        row = rows[(s.kind, str(s.meta.get("scale", "-")))]
        cost = step_cost(s)
        status = plan.status(s)
        row["steps"] += 1
        row["done"] += status == sf.DONE
        row["failed"] += status == sf.FAILED
        if cost.tokens is None or cost.flops is None:
            row["unknown"] = True
        row["tokens"] += cost.tokens or 0
        row["flops"] += cost.flops or 0
    order = {"encoder": 0, "trunk": 1, "branch": 2, "finetune": 3, "eval": 4}
    lines = [f"study {plan.study.name}: {len(plan.study.cells)} grid cells → {len(plan.steps)} steps "
             f"in {len(plan.levels())} levels; root {plan.root}",
             f"{'kind':<9} {'scale':<6} {'steps':>6} {'done':>5} {'failed':>6} "
             f"{'tokens/step':>12} {'tokens':>9} {'FLOPs':>9}"]
    total_tokens = total_flops = 0
    def key(item):
        (kind, scale), _ = item
        params = PRESETS[scale].params["lm_total"] if scale in PRESETS else 0
        return order[kind], params, scale

    for (kind, scale), r in sorted(rows.items(), key=key):
        per = r["tokens"] / r["steps"]
        mark = "+" if r["unknown"] else ""
        lines.append(f"{kind:<9} {scale:<6} {r['steps']:>6} {r['done']:>5} {r['failed']:>6} "
                     f"{_fmt(per):>12} {_fmt(r['tokens']) + mark:>9} {_fmt(r['flops']) + mark:>9}")
        total_tokens += r["tokens"]
        total_flops += r["flops"]
    done = sum(plan.status(s) == sf.DONE for s in plan.steps)
    lines.append(f"{'total':<16} {len(plan.steps):>6} {done:>5} {'':>6} {'':>12} "
                 f"{_fmt(total_tokens):>9} {_fmt(total_flops):>9}")
    sav = sharing_savings(plan)
    if sav["tokens_saved"] >= 0:
        lines.append(f"sharing trunks saves {_fmt(sav['tokens_saved'])} tokens "
                     f"({sav['saved_percent']:.1f}% of {_fmt(sav['tokens_unshared'])} if every branch "
                     f"trained its own text-only prefix)")
    else:  # no f = 1: a trunk trains its full schedule past the last checkpoint any step uses
        lines.append(f"sharing trunks saves nothing here: the trunks train {_fmt(-sav['tokens_saved'])} "
                     "tokens past the last checkpoint any step uses (their LR schedule runs to the end)")
    if any(r["unknown"] for r in rows.values()):
        lines.append("+ some steps' tokens are unknown until their data is read "
                     "([finetune].samples = 0); totals leave them out")
    lines += _gpu_lines(plan, gpu, capacity)
    missing = sorted(set(local_missing(p for src in plan.study.data.values() for p in src.paths)))
    if missing:
        lines.append(f"note: {len(missing)} data path(s) do not exist on this machine "
                     f"(planned with --no-data-check), e.g. {missing[0]}")
    return "\n".join(lines)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else k)
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def _done_configs(root: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for folder in sorted(sf.kind_dir(root, kind).glob("*")):
        if sf.dir_state(folder) != sf.DONE:
            continue
        data = sf.read_json_or_none(sf.StepPaths(folder).config)
        if data is not None:
            out.append((folder.name, _flatten({"config": data.get("config", {}),
                                               "parents": data.get("parents", [])})))
    return out


def explain(plan: Plan) -> str:
    """Why each not-done step must run: no output yet / failed / which field differs."""
    lines, cache = [], {}
    for s in plan.steps:
        status = plan.status(s)
        if status == sf.DONE:
            continue
        label = f"{s.kind:<8} {s.step_id} {s.meta.get('scale', '')}"
        if status == sf.FAILED:
            reason = _failure_reason(plan.dir(s))
            lines.append(f"{label}: failed before ({reason}); `run --retry-failed` reruns it")
            continue
        if status == sf.CORRUPT:
            problem = sf.result_problem(sf.StepPaths(plan.dir(s)))
            lines.append(f"{label}: corrupt ({problem}); delete it and `run` recomputes the step")
            continue
        done = cache.setdefault(s.kind, _done_configs(plan.root, s.kind))
        if not done:
            lines.append(f"{label}: no output yet (no done {s.kind} step under the root)")
            continue
        mine = _flatten({"config": s.to_json()["config"], "parents": [list(p) for p in s.parents]})
        best_id, diff = min(((sid, _diff(mine, other)) for sid, other in done),
                            key=lambda item: len(item[1]))
        shown = "; ".join(f"{k}: {o} → {m}" for k, o, m in diff[:3])
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        lines.append(f"{label}: differs from done {s.kind} {best_id} in {shown}{more}")
    return "\n".join(lines) if lines else "every step is done"


def _diff(mine: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = sorted(set(mine) | set(other))
    return [(k, other.get(k, "∅"), mine.get(k, "∅")) for k in keys if mine.get(k) != other.get(k)]


def _failure_reason(d: Path) -> str:
    try:
        failure = sf.read_failure(d)
    except sf.StepFileError as exc:
        return str(exc)
    return f"{failure.reason}: {failure.error}"
