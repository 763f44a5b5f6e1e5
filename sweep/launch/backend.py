"""What every launch backend shares: the `Backend` interface, its `LaunchResult`, the job factory
type and DAG levels among the steps of one submission. The backends (`inline`, `local`,
`slurm`) import this module; `sweep.launch` picks one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from models.steps import Step

if TYPE_CHECKING:
    from sweep.status import StepStatus

BACKENDS = ("inline", "local", "slurm")
JobFactory = Callable[[Step, Any], Callable[[], Any]]  # (step, root) → a submitit-picklable callable


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchResult:
    submitted: int  # steps handed to the backend
    completed: int  # steps that finished with result.json (0 for slurm: it returns at once)
    failed: int  # steps that raised or were killed
    blocked: int = 0  # steps not run because a parent failed in this run
    job_ids: tuple[str, ...] = ()
    sbatch_calls: int = 0  # slurm: job arrays submitted


class Backend(Protocol):
    name: str

    def run(self, plan: Any, steps: Sequence[Step], *, workers: int = 1, progress: bool = True,
            job_factory: JobFactory | None = None,
            statuses: dict[str, StepStatus] | None = None) -> LaunchResult: ...


def run_levels(steps: Sequence[Step]) -> dict[str, int]:
    """step_id → level among these steps (0 = no parent among them), for arrays and ordering."""
    level: dict[str, int] = {}
    for step in steps:  # parents come first
        level[step.step_id] = 1 + max((level[p] for _, p in step.parents if p in level), default=-1)
    return level
