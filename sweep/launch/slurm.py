"""The SLURM backend: one job array per DAG level and trunk family, `afterany` between levels.

`run` submits and returns at once, recording every job in the launch journal. Resources per step
kind and scale come from the study's [backend.slurm…] layers through `sbatch_parameters`: an LM
step's job spans `nodes` with one task (rank) per GPU, which srun starts. Steps of one level that
need the same resources and descend from the same trunk share one array. An array's dependency
waits for every task of its parents' arrays, so arrays that mixed families would hold a 79m
model's fine-tunes until the 1.4b branches of that level finished. A study costs one sbatch call
per level and trunk (scale × seed × text data). Jobs get SIGUSR2 before their time limit and are
checkpointed and requeued by the worker (Lightning's own SLURM requeue stays off).

The dependency is `afterany`, not `afterok`: a dependency names whole arrays, so with `afterok` one
cancelled or failed task would cancel the children of all its siblings too. Each task checks its
own parents instead (`StepJob` runs nothing when a parent has no result.json), so only the
children of the task that failed stand still (status: blocked).
"""

from __future__ import annotations

import shlex
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import submitit

import sweep
from models.stepfiles import IN_FLIGHT
from models.steps import Step
from sweep.launch.backend import JobFactory, LaunchResult, run_levels
from sweep.launch.journal import JobRecord, append_jobs
from sweep.launch.worker import StepJob
from sweep.status import StepStatus, reconcile


class SlurmSettingsError(ValueError):
    """A [backend.slurm] value cannot be turned into an sbatch option."""


def parse_extra(extra: Sequence[str], *, where: str = "backend.slurm.extra") -> dict[str, Any]:
    """("--constraint=a100", "--exclusive") → {"constraint": "a100", "exclusive": True}."""
    out: dict[str, Any] = {}
    for option in extra:
        if not option.startswith("--") or len(option) < 3 or " " in option.split("=", 1)[0]:
            raise SlurmSettingsError(f"{where}: {option!r} is not a long sbatch option "
                                     "like \"--constraint=a100\" or \"--exclusive\"")
        key, has_value, value = option[2:].partition("=")
        out[key] = value if has_value else True
    return out


def source_setup() -> list[str]:
    """A shell line putting this checkout first on PYTHONPATH, so jobs import the same code."""
    src = Path(sweep.__file__).resolve().parent.parent
    return [f"export PYTHONPATH={shlex.quote(str(src))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def signal_delay_s(time_min: int) -> int:
    """Seconds of warning before the time limit: a fifth of it, between 10 s and 2 minutes."""
    return int(min(120, max(10, time_min * 60 // 5)))


def sbatch_parameters(settings: Any, *, where: str = "backend.slurm") -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one step kind's SlurmSettings (no job name)."""
    params: dict[str, Any] = {
        "time": settings.time_min, "cpus_per_task": settings.cpus, "mem": f"{settings.mem_gb}GB",
        "array_parallelism": settings.array_parallelism,
        "signal_delay_s": signal_delay_s(settings.time_min), "setup": source_setup(),
        "wckey": "vlmsweep",
    }
    for key in ("partition", "account", "qos"):
        if getattr(settings, key):
            params[key] = getattr(settings, key)
    # One task per rank: srun starts them and Lightning's SLURM environment reads their ranks.
    params["nodes"], params["ntasks_per_node"] = settings.nodes, settings.ranks_per_node
    if settings.gpus_per_node:
        params["gpus_per_node"] = settings.gpus_per_node
    if settings.extra:
        params["additional_parameters"] = parse_extra(settings.extra, where=f"{where}.extra")
    return params


class SlurmBackend:
    name = "slurm"

    def run(self, plan: Any, steps: Sequence[Step], *, workers: int = 1, progress: bool = True,
            job_factory: JobFactory | None = None,
            statuses: dict[str, StepStatus] | None = None) -> LaunchResult:
        factory = job_factory or StepJob
        statuses = reconcile(plan) if statuses is None else statuses
        groups = group_steps(plan, steps)
        job_of: dict[str, str] = {}  # step_id → job id, this submission
        array_of: dict[str, str] = {}  # step_id → array job id, this submission
        job_ids: list[str] = []
        for (level, _family), members in groups:
            deps = _dependencies(members, array_of, statuses)
            records = self._submit(plan, level, members, deps, factory)
            for r in records:
                job_of[r.step_id], array_of[r.step_id] = r.job_id, r.array_job_id or r.job_id
                job_ids.append(r.job_id)
            append_jobs(plan.root, records)
        return LaunchResult(submitted=len(job_ids), completed=0, failed=0,
                            job_ids=tuple(job_ids), sbatch_calls=len(groups))

    def _submit(self, plan: Any, level: int, members: list[Step], deps: list[str],
                factory: JobFactory) -> list[JobRecord]:
        backend = plan.study.backend
        executor = submitit.SlurmExecutor(folder=Path(plan.root) / "logs" / "%j",
                                          max_num_timeout=backend.max_num_timeout)
        params = sbatch_parameters(slurm_settings(plan, members[0]),
                                   where=f"{plan.study.path}: backend.slurm")
        params["job_name"] = f"{plan.study.name}.L{level}"
        if deps:  # afterany + the task's own parent check (see the module docstring)
            params["dependency"] = "afterany:" + ":".join(deps)
        executor.update_parameters(**params)
        with executor.batch():
            jobs = [executor.submit(factory(step, plan.root)) for step in members]
        now = time.time()
        records = []
        for step, job in zip(members, jobs):
            array_id, _, index = job.job_id.partition("_")
            records.append(JobRecord(
                step_id=step.step_id, kind=step.kind, job_id=job.job_id, backend="slurm",
                study=plan.study.name, log=str(job.paths.stderr), submitted_at=now,
                array_job_id=array_id if index else "", array_index=int(index) if index else -1,
                level=level))
        return records


def group_steps(plan: Any, steps: Sequence[Step]) -> list[tuple[tuple[int, str], list[Step]]]:
    """Steps grouped by (level, trunk family, resources): each group is one sbatch call, in level order."""
    levels = run_levels(steps)
    groups: dict[tuple[int, str, str], list[Step]] = defaultdict(list)
    for step in steps:
        settings = slurm_settings(plan, step)
        groups[(levels[step.step_id], trunk_family(step, plan.by_id), repr(settings))].append(step)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[1][0].kind, item[0][1]))
    return [((level, family), members) for (level, family, _), members in ordered]


def slurm_settings(plan: Any, step: Step) -> Any:
    """The resources of one step: its kind's and its scale's [backend.slurm…] layers."""
    return plan.study.backend.slurm_for(step.kind, str(step.meta.get("scale", "")))


def trunk_family(step: Step, by_id: dict[str, Step]) -> str:
    """The id of the trunk `step` descends from ("" for steps above every trunk: encoders)."""
    while step.kind != "trunk":
        parents = [by_id[pid] for _, pid in step.parents if pid in by_id]
        lm = [p for p in parents if p.kind != "encoder"]
        if not lm:
            return ""
        step = lm[0]
    return step.step_id


def _dependencies(members: list[Step], array_of: dict[str, str],
                  statuses: dict[str, StepStatus]) -> list[str]:
    """afterany targets: arrays of this submission holding a parent, and parents' queued jobs."""
    deps: set[str] = set()
    for step in members:
        for _, pid in step.parents:
            if pid in array_of:
                deps.add(array_of[pid])
            elif pid in statuses and statuses[pid].state in IN_FLIGHT:
                deps.add(statuses[pid].job_id)
    return sorted(deps)
