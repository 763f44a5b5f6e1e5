"""LR schedules against their formulas: trunk warmup + cosine, a branch's continuation and rewarm,
the finetune schedule, and step counts from token budgets."""

from __future__ import annotations

import math

import pytest

from models.config import TrainDefaults
from models.schedules import Schedule, branch_schedule, finetune_schedule, steps_for, trunk_schedule
from tests.models_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

TRAIN = TrainDefaults(lr=3e-3, warmup_steps=10, batch_size=4, seq_len=32, min_lr_ratio=0.1)


def cosine(peak: float, floor: float, progress: float) -> float:
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def test_steps_from_tokens_round_up() -> None:
    assert steps_for(128, 4, 32) == 1
    assert steps_for(129, 4, 32) == 2
    assert steps_for(1280, 4, 32) == 10


def test_trunk_is_linear_warmup_then_cosine_to_the_floor() -> None:
    s = trunk_schedule(TRAIN, 100)
    assert s.lr_at(0) == pytest.approx(3e-3 / 10)
    assert s.lr_at(4) == pytest.approx(3e-3 * 5 / 10)
    assert s.lr_at(9) == pytest.approx(3e-3)
    for step in (10, 33, 55, 99):
        assert s.lr_at(step) == pytest.approx(cosine(3e-3, 3e-4, (step - 10) / 90))
    assert s.lr_at(100) == pytest.approx(3e-4)
    assert s.lr_at(500) == pytest.approx(3e-4)


def test_branch_continue_starts_at_the_trunk_lr_and_decays_over_the_stage() -> None:
    trunk = trunk_schedule(TRAIN, 100)
    branch = branch_schedule("continue", TRAIN, 40, trunk, trunk_step=60)
    start = trunk.lr_at(60)
    assert branch.lr_at(0) == pytest.approx(start)
    assert branch.lr_at(20) == pytest.approx(cosine(start, 3e-4, 0.5))
    assert branch.lr_at(40) == pytest.approx(3e-4)


def test_branch_continue_during_warmup_starts_at_the_peak_and_at_f1_stays_at_the_floor() -> None:
    trunk = trunk_schedule(TRAIN, 100)
    early = branch_schedule("continue", TRAIN, 40, trunk, trunk_step=5)
    assert early.lr_at(0) == pytest.approx(3e-3)
    end = branch_schedule("continue", TRAIN, 40, trunk, trunk_step=100)
    assert all(end.lr_at(s) == pytest.approx(3e-4) for s in range(0, 41, 5))


def test_branch_rewarm_warms_up_again_capped_at_a_tenth_of_the_stage() -> None:
    long = branch_schedule("rewarm", TRAIN, 200)
    assert long.warmup_steps == 10
    assert long.lr_at(0) == pytest.approx(3e-4)
    assert long.lr_at(9) == pytest.approx(3e-3)
    assert long.lr_at(105) == pytest.approx(cosine(3e-3, 3e-4, 95 / 190))
    short = branch_schedule("rewarm", TRAIN, 50)
    assert short.warmup_steps == 5
    assert short.lr_at(4) == pytest.approx(3e-3)
    with pytest.raises(ValueError, match="policy"):
        branch_schedule("sideways", TRAIN, 50)
    with pytest.raises(ValueError, match="trunk"):
        branch_schedule("continue", TRAIN, 50)


def test_finetune_is_a_short_warmup_then_cosine_to_zero() -> None:
    s = finetune_schedule(1e-3, 103)
    assert s.warmup_steps == 4
    assert s.lr_at(0) == pytest.approx(1e-3 / 4)
    assert s.lr_at(4) == pytest.approx(1e-3)
    assert s.lr_at(4 + 99 // 2) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert s.lr_at(103) == 0.0 and 0 < s.lr_at(102) < 1e-6
    assert finetune_schedule(1e-3, 5).warmup_steps == 1


def test_schedule_rejects_negative_lengths() -> None:
    with pytest.raises(ValueError):
        Schedule(peak_lr=1.0, floor_lr=0.1, warmup_steps=-1, total_steps=10)
