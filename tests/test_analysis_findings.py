"""Findings are stated only beyond their uncertainty (seeds and eval items), on synthetic studies whose
true effects are known: inside the noise → "not resolved at this budget", far outside → stated. Core
tasks follow the rule fixed in advance, and the best-f trend is not stated from overlapping intervals."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from analysis import findings, scores
from analysis.findings import NOT_RESOLVED

VL = {"attribute": 0.4, "counting": 0.5, "texture": 0.58}  # task → chance
TEXT = {"facts": 0.3, "story": 0.25}


def study(*, effect: float, seed_sd: float, n_items: int, seeds: int = 3, fractions=(0.8, 1.0),
          slope: float = 0.0, rng_seed: int = 0) -> pl.DataFrame:
    """Per-task eval rows of final models (and a trunk at checkpoint 1.0): VL accuracy is chance +
    0.2 (+ `effect` at f = 0.8, + `slope`·f), texture stays at its chance; each model adds its own
    N(0, seed_sd) and each task's accuracy is drawn from `n_items` items."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for f in fractions:
        for s in range(seeds):
            sid = f"ft-{f}-{s}"
            model = rng.normal(0, seed_sd)
            for task, chance in {**VL, **TEXT}.items():
                group = "vl" if task in VL else "text"
                learned = 0.0 if task == "texture" else 0.2 + slope * f + (effect if f == 0.8 else 0.0)
                p = float(np.clip(chance + learned + model, 0, 1))
                rows.append(dict(step_id=sid, stage="finetune", checkpoint=None, intro_fraction=f, seed=s,
                                 task=task, group=group, value=rng.binomial(n_items, p) / n_items, chance=chance))
    for task, chance in TEXT.items():
        rows.append(dict(step_id="trunk", stage="trunk", checkpoint=1.0, intro_fraction=None, seed=0, task=task,
                         group="text", value=chance + 0.3, chance=chance))
    frame = pl.DataFrame(rows).with_columns(
        scale=pl.lit("1m"), params=pl.lit(1_000_000), image_ratio=pl.lit(0.2), instruction_share=pl.lit(0.0),
        finetune_epochs=pl.lit(1), n=pl.lit(n_items))
    return scores.stable_scores(frame)


def analysed(task_scores: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    steps = scores.step_scores(task_scores)
    core = findings.core_tasks(task_scores, scores.main_stage(steps))
    steps = findings.with_core_scores(steps, task_scores, core)
    return steps, scores.main_stage(steps), core


def late_vs_full(task_scores: pl.DataFrame, score: str = "vl_core") -> findings.Effect:
    _, main, core = analysed(task_scores)
    effects = findings.axis_effects(main, task_scores, core, bootstrap=400)
    return next(e for e in effects if e.axis == "intro_fraction" and e.score == score)


def test_an_effect_inside_the_noise_is_not_resolved() -> None:
    effect = late_vs_full(study(effect=0.01, seed_sd=0.03, n_items=100))
    assert effect.label == "images at 80% vs at 100%" and (effect.n_a, effect.n_b) == (3, 3)
    assert not effect.estimate.resolved
    _, main, core = analysed(study(effect=0.01, seed_sd=0.03, n_items=100))
    text = "\n".join(findings.markdown(effects=[effect], trends=[], core=core, bootstrap=400))
    assert f"| {NOT_RESOLVED} |" in text and "No effect is resolved at this budget." in text


def test_an_effect_well_outside_the_noise_is_stated_with_both_uncertainties() -> None:
    effect = late_vs_full(study(effect=0.15, seed_sd=0.005, n_items=2000))
    est = effect.estimate
    assert est.resolved and est.value == pytest.approx(0.15, abs=0.03)
    assert est.seed_se is not None and 0 < est.seed_se < 0.02 and 0 < est.item_se < 0.02
    lo, hi = est.item_interval
    assert 0 < lo < est.value < hi
    _, _, core = analysed(study(effect=0.15, seed_sd=0.005, n_items=2000))
    text = "\n".join(findings.markdown(effects=[effect], trends=[], core=core, bootstrap=400))
    assert "**stated**" in text and "- 1m: images at 80% vs at 100%: VL core +0." in text
    assert "seeds, ±" in text and "items)" in text
    # one test, and what a stated effect is worth before it is replicated
    assert "This file makes 1 such test, each at 95%: about 0.05 of them may read" in text
    assert "vlmsweep demo --seed-offset 10" in text


def test_many_tests_are_counted_and_single_runs_are_not_tests() -> None:
    task_scores = study(effect=0.0, seed_sd=0.01, n_items=200)
    _, main, core = analysed(task_scores)
    effects = findings.axis_effects(main, task_scores, core, bootstrap=100)
    text = "\n".join(findings.markdown(effects=effects, trends=[], core=core, bootstrap=100))
    assert len(effects) == 4 and "This file makes 4 such tests, each at 95%: about 0.2 of them" in text
    one = late_vs_full(study(effect=0.3, seed_sd=0.001, n_items=500, seeds=1))
    text = "\n".join(findings.markdown(effects=[one], trends=[], core=core, bootstrap=100))
    assert "such test" not in text


def test_items_alone_can_leave_an_effect_unresolved() -> None:
    """Seeds agree (tiny seed SE) but 20 items per task cannot tell 0.05 apart: not stated."""
    effect = late_vs_full(study(effect=0.05, seed_sd=0.0, n_items=20, rng_seed=3))
    lo, hi = effect.estimate.item_interval
    assert lo < 0 < hi and not effect.estimate.resolved


def test_one_run_per_cell_is_never_resolved() -> None:
    effect = late_vs_full(study(effect=0.3, seed_sd=0.001, n_items=5000, seeds=1))
    assert effect.estimate.seed_se is None and not effect.estimate.resolved
    assert "one run: no seed SE" in effect.estimate.text()


def test_core_tasks_follow_the_rule_fixed_in_advance() -> None:
    task_scores = study(effect=0.0, seed_sd=0.01, n_items=200)
    _, main, core = analysed(task_scores)
    kept = {(r["group"], r["task"]): r for r in core.iter_rows(named=True)}
    assert not kept[("vl", "texture")]["core"] and kept[("vl", "attribute")]["core"]
    assert kept[("text", "facts")]["basis"] == "fully trained trunk"  # the trunk family, not the cells
    assert kept[("vl", "counting")]["basis"] == "final models" and kept[("vl", "counting")]["runs"] == 6
    # the core score leaves the unlearned task out; the all-task average keeps it
    assert (main["vl_core"] > main["vl_score"]).all()
    assert main["vl_core"].mean() == pytest.approx(0.2, abs=0.03)


def test_a_trend_over_f_is_stated_only_beyond_its_noise() -> None:
    fractions = (0.0, 0.4, 0.8, 1.0)
    for slope, resolved in ((0.3, True), (0.0, False)):
        _, main, core = analysed(study(effect=0.0, seed_sd=0.01, n_items=400, fractions=fractions, slope=slope))
        trend = next(t for t in findings.fraction_trends(main, study(effect=0.0, seed_sd=0.01, n_items=400,
                                                                     fractions=fractions, slope=slope),
                                                         core, bootstrap=300) if t.score == "vl_core")
        assert trend.slope.resolved is resolved, (slope, trend.slope)
        assert trend.fractions == fractions and trend.n_runs == 12


def test_best_f_trend_from_overlapping_intervals_is_not_stated() -> None:
    """The old findings said "Best f moves by -0.264 per tenfold increase" from two scales whose
    best-f intervals were both [0, 1]."""
    overlapping = [("170k", 170_000, 0.7, (0.0, 1.0)), ("1m", 1_000_000, 0.46, (0.0, 1.0))]
    text = findings.best_fraction_verdict(overlapping, -0.264)
    assert NOT_RESOLVED in text and "moves by" not in text and "[0.00, 1.00]" in text
    apart = [("170k", 170_000, 0.3, (0.2, 0.4)), ("1m", 1_000_000, 0.8, (0.7, 0.9))]
    assert "moves by +0.650 per tenfold" in findings.best_fraction_verdict(apart, 0.65)
    assert NOT_RESOLVED in findings.best_fraction_verdict([apart[0], ("1m", 1_000_000, 0.8, None)], 0.65)


def test_core_scores_count_popes_splits_as_one_task_as_every_average_does() -> None:
    """POPE's splits fold into `pope` (their mean) in the core rule, the core scores and the item
    bootstrap: a split at chance does not drop out of vl_core while its siblings stay in."""
    rng = np.random.default_rng(3)
    learned = {"attribute": 0.2, "pope_random": 0.3, "pope_popular": 0.2, "pope_adversarial": 0.0}
    chance = {"attribute": 0.4, "pope_random": 0.5, "pope_popular": 0.5, "pope_adversarial": 0.5}
    rows = [dict(step_id=f"ft-{s}", stage="finetune", checkpoint=None, intro_fraction=0.8, seed=s, task=task,
                 group="vl", value=rng.binomial(4000, chance[task] + gain) / 4000, chance=chance[task])
            for s in range(3) for task, gain in learned.items()]
    task_scores = scores.stable_scores(pl.DataFrame(rows).with_columns(
        scale=pl.lit("1m"), params=pl.lit(1_000_000), image_ratio=pl.lit(0.2), instruction_share=pl.lit(0.0),
        finetune_epochs=pl.lit(1), n=pl.lit(4000)))
    _, main, core = analysed(task_scores)
    assert sorted(core["task"].to_list()) == ["attribute", "pope"] and core["core"].all()
    for step in main.iter_rows(named=True):
        mine = {r["task"]: r["stable_score"] for r in task_scores.filter(pl.col("step_id") == step["step_id"])
                .iter_rows(named=True)}
        pope = (mine["pope_random"] + mine["pope_popular"] + mine["pope_adversarial"]) / 3
        assert step["vl_core"] == pytest.approx((mine["attribute"] + pope) / 2)
        assert step["vl_core"] == pytest.approx(step["vl_score"])  # both averages count two benchmarks
    rows = findings._score_rows(task_scores, core, "vl_core")
    draws = findings.item_draws(rows, main["step_id"].to_list(), 400, np.random.default_rng(0))
    assert draws.mean(0) == pytest.approx(main["vl_core"].to_numpy(), abs=0.005)


@pytest.mark.parametrize("definition", ["difference", "centered"])
def test_the_item_bootstrap_draws_on_the_scale_of_the_studys_stable_score(definition):
    """Under "centered" a task's score is (acc − chance)/(1 − chance): its item draws are spread by
    the same 1/(1 − chance), or the intervals of text scores (chance 1/4) read 3/4 of their width."""
    from analysis import scores as sc

    frame = pl.DataFrame({"step_id": ["s"], "task": ["arc"], "group": ["text"], "value": [0.55],
                          "chance": [0.25], "n": [400]}).with_columns(
        (pl.col("value") - pl.col("chance")).alias("stable_score"))
    rows = sc.centered(frame, definition)
    draws = findings.item_draws(rows, ["s"], 4000, np.random.default_rng(0))[:, 0]
    scale = 1 / 0.75 if definition == "centered" else 1.0
    assert draws.mean() == pytest.approx(rows["stable_score"][0], abs=0.004)
    assert draws.std() == pytest.approx(math.sqrt(0.55 * 0.45 / 400) * scale, rel=0.06)
