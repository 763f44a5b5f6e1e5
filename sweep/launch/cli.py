"""`vlmsweep run` and `vlmsweep status`: argument definitions and the thin handlers over sweep.launch.

`run` takes the root lock, reconciles, selects what to submit and hands it to a backend;
`status` prints every step's state (a table, or JSON), optionally refreshing with --watch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import submitit

from models import stepfiles as sf
from models.stepfiles import CORRUPT, DONE, FAILED, IN_FLIGHT, INTERRUPTED, USER_REASONS
from sweep.datacheck import check_plan, check_shards
from sweep.errors import UserError
from sweep.launch import BACKENDS, LaunchResult, get_backend, select_steps
from sweep.launch.devices import local_workers
from sweep.launch.journal import JournalError
from sweep.launch.memory import check_memory_limit, record_repeated_kills
from sweep.launch.queue import QueueError
from sweep.launch.slurm import SlurmSettingsError, group_steps, sbatch_parameters, slurm_settings
from sweep.launch.submitit_adapter import render_sbatch
from sweep.locking import root_lock
from sweep.status import StepStatus, reconcile, summary

WATCH_S = 5.0


class LaunchError(UserError):
    """The launch could not proceed: no SLURM answer, an unreadable journal, a bad sbatch option."""


def _add_once(p: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    if flag not in p._option_string_actions:  # the main CLI may have defined it already
        p.add_argument(flag, **kwargs)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    _add_once(p, "--root", type=Path, default=None, help="results root (default: the study's)")
    _add_once(p, "--backend", choices=BACKENDS, default=None,
              help="where steps run (default: [backend].default of the study)")
    _add_once(p, "--workers", type=int, default=None, help="local worker processes")
    _add_once(p, "--retry-failed", action="store_true",
              help="also rerun failed steps (each at most [backend].max_failures times)")
    _add_once(p, "--dry-run", action="store_true", help="print what would run; run nothing")


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    _add_once(p, "--root", type=Path, default=None, help="results root (default: the study's)")
    _add_once(p, "--json", action="store_true", help="machine-readable output")
    _add_once(p, "--watch", action="store_true", help="refresh until no step is queued or running")


def _plan_from_args(args: argparse.Namespace) -> Any:
    from sweep.plan import plan_study
    from sweep.spec import load_study

    return plan_study(load_study(args.study), root=getattr(args, "root", None))


def _by_kind(steps: list[Any]) -> str:
    counts = Counter(s.kind for s in steps)
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing"


def study_command(plan: Any, command: str, *extra: str) -> str:
    """The full command line that runs `command` on this study and root (what hints print)."""
    return " ".join(["vlmsweep", command, shlex.quote(str(plan.study.path)),
                     "--root", shlex.quote(str(plan.root)), *extra])


def _explain(plan: Any, statuses: dict[str, StepStatus], chosen: list[Any], max_failures: int,
             retry_failed: bool) -> None:
    counts = summary(statuses)
    print(f"{plan.study.name}: {len(plan.steps)} steps under {plan.root}: "
          + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    picked = {s.step_id for s in chosen}
    for s in statuses.values():
        if s.state == CORRUPT:
            print(f"  not run: {s.kind} {s.step_id}: corrupt: {s.reason}")
        elif s.state == FAILED and s.step_id not in picked:
            why = (f"failed {s.failures} times (max_failures = {max_failures})"
                   if s.failures >= max_failures else "failed; rerun with --retry-failed")
            print(f"  not retried: {s.kind} {s.step_id}: {why}: {s.reason}")
        elif s.state == INTERRUPTED and s.step_id in picked:
            print(f"  resumed: {s.kind} {s.step_id}: {s.reason}")
    print(f"to run: {len(chosen)} steps ({_by_kind(chosen)})")


def what_is_left(plan: Any, statuses: dict[str, StepStatus]) -> tuple[int, list[str]]:
    """(exit status, lines) for the end of a run: 0 when every step is done; else 2 when a step
    failed for bad input or an unwritable root, or is corrupt (the user must fix a file), else 1;
    the lines say what is left and the command that continues."""
    left = [s for s in statuses.values() if s.state != DONE]
    if not left:
        return 0, [f"{plan.study.name}: all {len(statuses)} steps done"]
    counts = Counter(s.state for s in left)
    lines = [f"{plan.study.name}: not complete: {len(left)} of {len(statuses)} steps left ("
             + ", ".join(f"{n} {state}" for state, n in counts.items()) + ")"]
    for s in left:
        if s.state in (FAILED, CORRUPT, INTERRUPTED):
            lines.append(f"  {s.state:<11} {s.kind:<8} {s.step_id}  {s.reason}")
    user = any(s.state == CORRUPT or (s.state == FAILED and s.cause in USER_REASONS) for s in left)
    if counts.get(FAILED):
        lines.append(f"fix the cause, then `{study_command(plan, 'run', '--retry-failed')}`")
    elif not counts.get(CORRUPT):
        lines.append(f"continue with `{study_command(plan, 'run')}`")
    return (2 if user else 1), lines


def _dry_run_slurm(plan: Any, chosen: list[Any]) -> None:
    for (level, family), members in group_steps(plan, chosen):
        params = sbatch_parameters(slurm_settings(plan, members[0]))
        trunk = f", trunk {family} ({plan.by_id[family].meta.get('scale', '?')})" if family else ""
        print(f"\n# level {level}{trunk}: array of {len(members)} ({_by_kind(members)})")
        print(render_sbatch(params, folder=Path(plan.root) / "logs" / "%j",
                            job_name=f"{plan.study.name}.L{level}", array_size=len(members)))


def _launch(args: argparse.Namespace, plan: Any) -> LaunchResult | None:
    settings = plan.study.backend
    name = getattr(args, "backend", None) or settings.default
    workers = local_workers(getattr(args, "workers", None), settings)
    retry = bool(getattr(args, "retry_failed", False))
    # The lock spans reconcile → submit, so a concurrent run sees our jobs in the journal;
    # a dry run writes nothing, not even the lock file.
    dry = bool(getattr(args, "dry_run", False))
    # Before anything is written or trains: the root, paths, tokenizers and eval files of every
    # step not done, and (a real run) the first records of each shard those steps read.
    todo = [s for s in plan.steps if plan.status(s) != DONE]
    if not dry and todo:
        check_memory_limit()
    check_plan(plan, todo)
    if not dry:
        check_shards(todo)
    with contextlib.nullcontext() if dry else root_lock(plan.root):
        statuses = reconcile(plan)
        if not dry and record_repeated_kills(plan, statuses):  # killed again: now a failure (oom)
            statuses = reconcile(plan)
        chosen = select_steps(plan, retry, settings.max_failures, statuses=statuses)
        _explain(plan, statuses, chosen, settings.max_failures, retry)
        if dry:
            if name == "slurm":
                _dry_run_slurm(plan, chosen)
            return None
        if not chosen:
            return LaunchResult(submitted=0, completed=0, failed=0)
        from sweep.plan import write_study_manifest

        write_study_manifest(plan)
        return get_backend(name).run(plan, chosen, workers=workers, progress=True,
                                     statuses=statuses)


def run_run(args: argparse.Namespace, plan: Any = None) -> int:
    plan = plan if plan is not None else _plan_from_args(args)
    try:
        result = _launch(args, plan)
        statuses = reconcile(plan) if result is not None else {}
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the running steps saved checkpoints
        print(f"vlmsweep run: stopped; continue with `{study_command(plan, 'run')}`",
              file=sys.stderr, flush=True)
        raise
    except (QueueError, JournalError, SlurmSettingsError, submitit.core.utils.FailedJobError,
            submitit.core.utils.FailedSubmissionError) as exc:
        raise LaunchError(str(exc)) from None
    if result is None:
        return 0
    if result.sbatch_calls:
        print(f"submitted {result.submitted} steps in {result.sbatch_calls} job arrays "
              f"(jobs recorded in {Path(plan.root) / 'launch' / 'jobs.jsonl'}); "
              f"follow with `{study_command(plan, 'status')}`")
        return 0
    if result.submitted:
        print(f"ran {result.submitted} steps: {result.completed} done, {result.failed} failed, "
              f"{result.blocked} blocked")
    if any(s.state in IN_FLIGHT for s in statuses.values()):  # another run or SLURM has them
        print(f"steps are still running elsewhere; follow with `{study_command(plan, 'status')}`")
        return 0
    code, lines = what_is_left(plan, statuses)
    print("\n".join(lines))
    return code


def _data_bound(share: Any) -> str:
    """"data-bound (…)" when a step waited for data more than DATA_BOUND_SHARE of its time."""
    if share is None or share <= sf.DATA_BOUND_SHARE:
        return ""
    return f"  data-bound: {100 * share:.0f}% of step time waiting for data (more data_workers?)"


def format_table(plan: Any, statuses: dict[str, StepStatus]) -> str:
    counts = summary(statuses)
    lines = [f"{plan.study.name}: {len(statuses)} steps under {plan.root}: "
             + ", ".join(f"{n} {state}" for state, n in counts.items() if n)]
    for s in statuses.values():
        if s.state == DONE:
            events = training_events(plan.root, s)
            if events:  # a done step that spiked, skipped batches or rewound: worth a look
                lines.append(f"  {s.state:<13} {s.kind:<8} {s.step_id}  {events}")
            result = sf.read_result(sf.step_paths(plan.root, s.kind, s.step_id).dir) or {}
            if _data_bound(result.get("data_wait_share")):
                lines.append(f"  {s.state:<13} {s.kind:<8} {s.step_id}{_data_bound(result['data_wait_share'])}")
            continue
        line = f"  {s.state:<13} {s.kind:<8} {s.step_id}"
        if s.job_id:
            line += f"  job {s.job_id}"
        if s.progress and s.progress.get("total_tokens"):
            line += f"  {100 * s.progress['tokens'] / s.progress['total_tokens']:.0f}%"
            line += _data_bound(s.progress.get("data_wait_share"))
        if s.reason:
            line += f"  {s.reason}"
        if s.state == FAILED and s.log:
            line += f"\n{'':16}log: {s.log}"
        lines.append(line)
    return "\n".join(lines)


EVENT_WORDS = {sf.SPIKE_METRIC: "loss spike(s)", sf.SKIPPED_METRIC: "batch(es) skipped (non-finite)",
               sf.REWIND_METRIC: "rewind(s) (non-finite)"}


def training_events(root: Any, status: StepStatus) -> str:
    """"3 loss spike(s), 1 rewind(s) (non-finite)" from a done step's result.json ("" if none)."""
    result = sf.read_json_or_none(sf.step_paths(root, status.kind, status.step_id).result) or {}
    return ", ".join(f"{result[name]} {words}" for name, words in EVENT_WORDS.items()
                     if isinstance(result.get(name), int) and result[name] > 0)


def run_status(args: argparse.Namespace, plan: Any = None) -> int:
    plan = plan if plan is not None else _plan_from_args(args)
    while True:
        try:
            statuses = reconcile(plan)
        except (QueueError, JournalError) as exc:
            raise LaunchError(str(exc)) from None
        if getattr(args, "json", False):
            print(json.dumps({"study": plan.study.name, "root": str(plan.root),
                              "counts": summary(statuses),
                              "steps": [s.to_json() for s in statuses.values()]}))
        else:
            print(format_table(plan, statuses))
        settled = not any(s.state in IN_FLIGHT for s in statuses.values())
        if not getattr(args, "watch", False) or settled:
            return 0
        sys.stdout.flush()
        time.sleep(WATCH_S)
