"""`studies/paper.toml` plans the paper's study as the paper ran it: one text-only trunk per scale
that every seed's branches share, and every branch fine-tuned for 1, 2, 3 and 4 epochs."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from sweep.plan import plan_study
from sweep.spec import load_study

PAPER = Path(__file__).resolve().parents[1] / "studies" / "paper.toml"


def _plan():
    return plan_study(load_study(PAPER))


def test_one_trunk_per_scale_shared_by_the_seed_runs() -> None:
    plan = _plan()
    trunks = [s for s in plan.steps if s.kind == "trunk"]
    assert Counter(s.meta["scale"] for s in trunks) == {"79m": 1, "154m": 1, "411m": 1, "1.4b": 1}
    seeds = {s.meta["seed"] for s in plan.steps if s.kind == "branch" and s.meta["scale"] == "1.4b"}
    assert seeds == {0, 1}  # the appendix's second seed branches from the same trunk


def test_every_branch_is_fine_tuned_for_one_to_four_epochs() -> None:
    plan = _plan()
    epochs: dict[str, set[int]] = defaultdict(set)
    for s in plan.steps:
        if s.kind == "finetune":
            epochs[s.parent("branch")].add(s.config.epochs)
    branches = [s.step_id for s in plan.steps if s.kind == "branch"]
    assert branches and all(epochs[b] == {1, 2, 3, 4} for b in branches)
