"""What a step runner gets and gives back: `Context` (the step, where its files live, how it runs,
the data provider, a progress callback) and `RunOutput` (what `models.run` writes into the step's
result files). Every runner (`models.stages.runners`, `models.stages.eval_step`) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from models.config import RunOptions
from models.steps import Step


@dataclass(kw_only=True)
class Context:
    step: Step
    root: Path
    dir: Path
    options: RunOptions
    data: Any  # the data provider module (models.data, or models.synthetic in tests)
    progress: Callable[..., None]  # (tokens, total tokens, tokens/s, data-wait share or None)
    writes_files: bool = True  # global rank 0: the one rank that writes the step's files


@dataclass(kw_only=True)
class RunOutput:
    tokens: int
    flops: int
    params: dict[str, int]
    metrics: list | None = None  # (step, tokens, name, value) rows
    evals: list | None = None  # evals rows
