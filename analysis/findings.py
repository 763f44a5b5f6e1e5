"""Findings that replicate: an effect or trend is stated only beyond its uncertainty.

Every number carries two uncertainties: the standard error over seeds (runs of one configuration)
and the spread of a bootstrap over eval items (each task's accuracy redrawn as Binomial(n, acc)/n:
resampling a task's n right/wrong answers with replacement, done per run, so runs evaluated on the
same items are treated as independent — conservative for differences). An effect is *resolved*
when |Δ| exceeds the t critical value (Welch's degrees of freedom, 95%) times its standard error
over seeds AND the 95% interval of the item bootstrap excludes 0; otherwise it reads
"not resolved at this budget". One run in a cell means no standard error, so never resolved.

Core scores (DCLM's idea: average only tasks that give a signal at this scale), by a rule fixed
before any comparison: a text task is core at a scale when the fully trained text-only trunk scores
above chance by more than `CORE_Z` item standard errors (the trunk family, which no comparison
uses); a VL task when the mean over every final model of the scale does (its level pooled over all
cells, never a difference between cells). The all-task averages stay beside the core ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import polars as pl
from scipy import stats

from analysis import scores as sc
from analysis.mdtext import md_text

NOT_RESOLVED = "not resolved at this budget"
CORE_Z = 2.0  # item standard errors above chance for a task to count as learned
SCORE_NAMES = {"vl_core": "VL core", "vl_score": "VL (all tasks)", "text_core": "text core",
               "text_score": "text (all tasks)"}
COMPARED_AXES = ("intro_fraction", "image_ratio", "finetune_epochs", "instruction_share")


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    """A number with its two uncertainties and whether it is told apart from 0."""

    value: float
    seed_se: float | None  # standard error over seeds (None: one run somewhere)
    item_se: float  # standard deviation of the item bootstrap
    item_interval: tuple[float, float]  # its 95% interval
    df: float | None  # degrees of freedom behind seed_se

    @property
    def resolved(self) -> bool:
        if self.seed_se is None or self.df is None or self.df < 1:
            return False
        beyond_seeds = abs(self.value) > stats.t.ppf(0.975, self.df) * self.seed_se
        lo, hi = self.item_interval
        return bool(beyond_seeds and (lo > 0 or hi < 0))

    def text(self, digits: int = 3) -> str:
        seeds = "one run: no seed SE" if self.seed_se is None else f"± {self.seed_se:.{digits}f} seeds"
        return f"{self.value:+.{digits}f} ({seeds}, ± {self.item_se:.{digits}f} items)"


@dataclass(frozen=True, kw_only=True, slots=True)
class Effect:
    scale: str
    axis: str
    a: object  # the compared value
    b: object  # the reference value
    score: str
    estimate: Estimate
    n_a: int
    n_b: int
    fixed: dict = field(default_factory=dict)  # the other axes' values

    @property
    def label(self) -> str:
        if self.axis == "intro_fraction":
            return f"images at {100 * self.a:g}% vs at {100 * self.b:g}%"
        return f"{self.axis} {self.a:g} vs {self.b:g}"


# -- core tasks ---------------------------------------------------------------------------------
def _binomial_se() -> pl.Expr:
    """A task accuracy's standard error over its n items."""
    return (pl.col("value").clip(0, 1) * (1 - pl.col("value").clip(0, 1)) / pl.col("n").clip(1)).sqrt()


def _benchmark_rows(task_scores: pl.DataFrame) -> pl.DataFrame:
    """Per step and benchmark: a folded suite's splits (POPE's) as one task, their mean value and
    stable score, and the item SE of that mean (independent splits: √Σse² / k)."""
    keys = [c for c in ("step_id", "scale", "group", "stage", "checkpoint") if c in task_scores.columns]
    return (task_scores.with_columns(_binomial_se().alias("_se"), sc.benchmark_expr().alias("_benchmark"))
            .group_by([*keys, "_benchmark"], maintain_order=True)
            .agg(pl.col("stable_score").mean(), (pl.col("_se").pow(2).sum().sqrt() / pl.len()).alias("_se"))
            .rename({"_benchmark": "task"}))


def core_tasks(task_scores: pl.DataFrame, main: pl.DataFrame, *, z: float = CORE_Z) -> pl.DataFrame:
    """Per scale and benchmark (POPE's splits folded into `pope`, as every average counts them): the
    level the rule looks at, its item SE, the basis, and `core`."""
    task_scores = _benchmark_rows(task_scores)
    final = task_scores.join(main.select("step_id"), on="step_id")
    trunks = task_scores.filter(pl.col("stage") == "trunk")
    if len(trunks):
        last = trunks.group_by("scale").agg(pl.col("checkpoint").max().alias("_last"))
        trunks = trunks.join(last, on="scale").filter(pl.col("checkpoint").eq_missing(pl.col("_last")))
    parts = []
    for group, source, basis in (("text", trunks, "fully trained trunk"), ("text", final, "final models"),
                                 ("vl", final, "final models")):
        rows = source.filter(pl.col("group") == group)
        if group == "text" and basis == "final models":
            rows = rows.filter(~pl.col("scale").is_in(trunks["scale"].unique().to_list()))
        if len(rows):
            parts.append(rows.group_by("scale", "group", "task").agg(
                pl.col("stable_score").mean().alias("level"), pl.col("_se").pow(2).mean().sqrt().alias("item_se"),
                pl.len().alias("runs")).with_columns(pl.lit(basis).alias("basis")))
    if not parts:
        return pl.DataFrame(schema={"scale": pl.String, "group": pl.String, "task": pl.String, "level": pl.Float64,
                                    "item_se": pl.Float64, "runs": pl.UInt32, "basis": pl.String, "core": pl.Boolean})
    out = pl.concat(parts).with_columns((pl.col("level") > z * pl.col("item_se")).alias("core"))
    return out.sort("scale", "group", "task")


def with_core_scores(steps: pl.DataFrame, task_scores: pl.DataFrame, core: pl.DataFrame) -> pl.DataFrame:
    """Add `vl_core` and `text_core` (mean stable score over the scale's core benchmarks, POPE's splits
    one of them) to step rows."""
    chosen = _benchmark_rows(task_scores).join(core.filter("core").select("scale", "group", "task"),
                                               on=["scale", "group", "task"])
    per_step = chosen.group_by("step_id").agg(
        pl.col("stable_score").filter(pl.col("group") == "vl").mean().alias("vl_core"),
        pl.col("stable_score").filter(pl.col("group") == "text").mean().alias("text_core"))
    return steps.drop("vl_core", "text_core", strict=False).join(per_step, on="step_id", how="left")


# -- the item bootstrap -------------------------------------------------------------------------
def _score_rows(task_scores: pl.DataFrame, core: pl.DataFrame, score: str) -> pl.DataFrame:
    """The task rows behind `score`, each with its `benchmark` (a core score: the core ones)."""
    group = score.split("_")[0]
    rows = task_scores.filter(pl.col("group") == group).with_columns(sc.benchmark_expr())
    if score.endswith("_core"):
        core = core.filter("core").select("scale", "group", pl.col("task").alias("benchmark"))
        rows = rows.join(core, on=["scale", "group", "benchmark"])
    return rows


def item_draws(rows: pl.DataFrame, step_ids: Sequence[str], bootstrap: int,
               rng: np.random.Generator) -> np.ndarray:
    """[bootstrap, steps]: each step's score (mean stable score of its rows; with a `benchmark`
    column, mean over benchmarks of their rows' mean) with every task's accuracy redrawn from its items."""
    index = {sid: k for k, sid in enumerate(step_ids)}
    rows = rows.filter(pl.col("step_id").is_in(list(step_ids)))
    by = ["step_id", "benchmark"] if "benchmark" in rows.columns else ["step_id", "task"]
    weight = rows.select(1.0 / pl.len().over(by))[:, 0].to_numpy()
    n = np.maximum(rows["n"].fill_null(1).to_numpy().astype(np.int64), 1)
    p = np.clip(rows["value"].to_numpy().astype(float), 0.0, 1.0)
    # On the scale of the rows' stable scores (`scores.centered`: 1/(1 − chance) under "centered").
    scale = rows["stable_scale"].fill_null(np.nan).to_numpy() if "stable_scale" in rows.columns else 1.0
    drawn = (rng.binomial(n, p, size=(bootstrap, len(n))) / n - rows["chance"].to_numpy()) * scale * weight
    owner = np.array([index[s] for s in rows["step_id"]], dtype=np.int64)
    sums = np.zeros((bootstrap, len(step_ids)))
    np.add.at(sums.T, owner, drawn.T)
    counts = np.bincount(owner, weights=weight, minlength=len(step_ids))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _interval(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def difference(a: pl.DataFrame, b: pl.DataFrame, rows: pl.DataFrame, score: str, *, bootstrap: int,
               rng: np.random.Generator) -> Estimate:
    """mean(a) − mean(b) of `score` over runs, with Welch's SE over seeds and the item bootstrap."""
    xa, xb = a[score].drop_nulls().to_numpy(), b[score].drop_nulls().to_numpy()
    va, vb = (x.var(ddof=1) / len(x) if len(x) > 1 else math.nan for x in (xa, xb))
    seed_se = math.sqrt(va + vb) if not math.isnan(va + vb) else None
    df = None
    if seed_se:
        df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    elif seed_se == 0.0:
        df = float(len(xa) + len(xb) - 2)
    ids_a, ids_b = a["step_id"].to_list(), b["step_id"].to_list()
    draws = item_draws(rows, ids_a + ids_b, bootstrap, rng)
    diff = np.nanmean(draws[:, :len(ids_a)], 1) - np.nanmean(draws[:, len(ids_a):], 1)
    return Estimate(value=float(xa.mean() - xb.mean()), seed_se=seed_se, item_se=float(np.nanstd(diff)),
                    item_interval=_interval(diff - diff.mean() + (xa.mean() - xb.mean())), df=df)


def level(runs: pl.DataFrame, rows: pl.DataFrame, score: str, *, bootstrap: int,
          rng: np.random.Generator) -> Estimate:
    """The mean of `score` over runs (a stable score: 0 is chance), with both uncertainties."""
    x = runs[score].drop_nulls().to_numpy()
    seed_se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    draws = np.nanmean(item_draws(rows, runs["step_id"].to_list(), bootstrap, rng), 1)
    return Estimate(value=float(x.mean()), seed_se=seed_se, item_se=float(np.nanstd(draws)),
                    item_interval=_interval(draws - draws.mean() + x.mean()), df=len(x) - 1.0 if len(x) > 1 else None)


# -- effects and trends -------------------------------------------------------------------------
def axis_effects(main: pl.DataFrame, task_scores: pl.DataFrame, core: pl.DataFrame, *,
                 scores: Sequence[str] = tuple(SCORE_NAMES), bootstrap: int = 1000, seed: int = 0) -> list[Effect]:
    """Per scale and compared axis, every value against the reference, the other axes held at their
    most common values. The reference is f = 1.0 for intro_fraction (the paper's "vs images at
    100%"), else the axis's most common value."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in main["scale"].unique(maintain_order=True).to_list():
        runs = main.filter(pl.col("scale") == scale)
        for axis in COMPARED_AXES:
            if axis not in runs.columns or runs[axis].n_unique() < 2:
                continue
            rows, fixed = sc.fix_other_axes(runs, [axis, "seed"])
            values = sorted(rows[axis].drop_nulls().unique().to_list())
            ref = 1.0 if axis == "intro_fraction" and 1.0 in values else sc.mode_value(rows[axis])
            for value in (v for v in values if v != ref):
                a, b = rows.filter(pl.col(axis) == value), rows.filter(pl.col(axis) == ref)
                for score in scores:
                    if a[score].drop_nulls().is_empty() or b[score].drop_nulls().is_empty():
                        continue
                    est = difference(a, b, _score_rows(task_scores, core, score), score,
                                     bootstrap=bootstrap, rng=rng)
                    out.append(Effect(scale=scale, axis=axis, a=value, b=ref, score=score, estimate=est,
                                      n_a=a[score].count(), n_b=b[score].count(), fixed=fixed))
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Trend:
    scale: str
    score: str
    slope: Estimate  # change of the score per unit intro fraction (0 → 1)
    n_runs: int
    fractions: tuple[float, ...]


def _slope(f: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """OLS slope of y on f and its standard error over runs (None without residual freedom)."""
    fc = f - f.mean()
    slope = float(fc @ (y - y.mean()) / (fc @ fc))
    if len(f) < 3:
        return slope, None
    resid = y - y.mean() - slope * fc
    return slope, float(math.sqrt(resid @ resid / (len(f) - 2) / (fc @ fc)))


def fraction_trends(main: pl.DataFrame, task_scores: pl.DataFrame, core: pl.DataFrame, *,
                    scores: Sequence[str] = ("text_core", "text_score", "vl_core", "vl_score"),
                    bootstrap: int = 1000, seed: int = 0) -> list[Trend]:
    """Slope of each score over intro_fraction per scale (other axes at their most common values),
    over every run: needs three or more fractions."""
    rng = np.random.default_rng(seed)
    out = []
    for scale in main["scale"].unique(maintain_order=True).to_list():
        rows, _ = sc.fix_other_axes(main.filter(pl.col("scale") == scale), ["intro_fraction", "seed"])
        for score in scores:
            runs = rows.filter(pl.col(score).is_not_null() & pl.col("intro_fraction").is_not_null())
            f = runs["intro_fraction"].to_numpy().astype(float)
            if len(np.unique(f)) < 3:
                continue
            slope, se = _slope(f, runs[score].to_numpy())
            draws = item_draws(_score_rows(task_scores, core, score), runs["step_id"].to_list(), bootstrap, rng)
            boot = np.array([_slope(f, d)[0] for d in draws])
            est = Estimate(value=slope, seed_se=se, item_se=float(boot.std()),
                           item_interval=_interval(boot - boot.mean() + slope), df=len(f) - 2.0)
            out.append(Trend(scale=scale, score=score, slope=est, n_runs=len(f),
                             fractions=tuple(sorted(set(f.tolist())))))
    return out


def best_fraction_verdict(best: Sequence[tuple[str, int | None, float, tuple[float, float] | None]],
                          slope: float | None) -> str:
    """Whether the best f moves with scale: (scale, params, best f, its interval) per scale. Stated
    only when the smallest and largest scales' intervals do not overlap."""
    ranked = sorted((b for b in best if b[1]), key=lambda b: b[1])
    if slope is None or len(ranked) < 2:
        return "Best f vs scale: needs two or more scales with a fitted best f."
    shown = ", ".join(f"{md_text(s)} {f:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if iv else " (no interval)")
                      for s, _, f, iv in ranked for lo, hi in [iv or (0, 0)])
    (_, _, _, small), (_, _, _, large) = ranked[0], ranked[-1]
    if small is None or large is None or not (small[1] < large[0] or large[1] < small[0]):
        return f"Best f vs scale: {NOT_RESOLVED} (best f {shown}: the intervals overlap)."
    return f"Best f moves by {slope:+.3f} per tenfold increase in parameters (best f {shown})."


def text_costs(steps: pl.DataFrame, main: pl.DataFrame, task_scores: pl.DataFrame, core: pl.DataFrame, *,
               bootstrap: int = 1000, seed: int = 0) -> list[tuple[str, dict, str, Estimate]]:
    """Per scale: (scale, the best VL configuration's axes, score, text score of the fully trained
    text-only trunk minus that configuration's). The best is by VL core mean (else the VL mean)."""
    rng = np.random.default_rng(seed)
    trunks = steps.filter(pl.col("stage") == "trunk")
    out = []
    for scale in main["scale"].unique(maintain_order=True).to_list():
        base = trunks.filter((pl.col("scale") == scale)
                             & (pl.col("checkpoint").is_null() | (pl.col("checkpoint") >= 1.0)))
        runs = main.filter(pl.col("scale") == scale)
        by = "vl_core" if runs["vl_core"].drop_nulls().len() else "vl_score"
        keys = [a for a in sc.CONFIG_KEYS if a in runs.columns]
        agg = runs.group_by(keys).agg(pl.col(by).mean()).drop_nulls(by).sort(by, descending=True)
        if base.is_empty() or agg.is_empty():
            continue
        best = agg.row(0, named=True)
        chosen = runs.join(agg.head(1).select(keys), on=keys, how="semi", nulls_equal=True)
        for score in ("text_core", "text_score"):
            if base[score].drop_nulls().is_empty() or chosen[score].drop_nulls().is_empty():
                continue
            est = difference(base, chosen, _score_rows(task_scores, core, score), score, bootstrap=bootstrap, rng=rng)
            shown = {k: best[k] for k in ("intro_fraction", "image_ratio", "instruction_share", "finetune_epochs")
                     if k in best}
            out.append((scale, shown, score, est))
    return out


def trunk_levels(steps: pl.DataFrame, task_scores: pl.DataFrame, core: pl.DataFrame, *,
                 bootstrap: int = 1000, seed: int = 0) -> list[tuple[str, float | None, int, Estimate]]:
    """(scale, checkpoint, runs, text score) of the text-only trunk at each evaluated checkpoint."""
    rng = np.random.default_rng(seed)
    trunks = steps.filter(pl.col("stage") == "trunk")
    out = []
    for (scale, checkpoint), runs in trunks.group_by("scale", "checkpoint", maintain_order=True):
        if runs["text_score"].drop_nulls().len():
            est = level(runs, _score_rows(task_scores, core, "text_score"), "text_score", bootstrap=bootstrap, rng=rng)
            out.append((scale, checkpoint, len(runs), est))
    return sorted(out, key=lambda r: (r[0], -1.0 if r[1] is None else r[1]))


# -- findings.md --------------------------------------------------------------------------------
def _verdict(est: Estimate) -> str:
    return "**stated**" if est.resolved else NOT_RESOLVED


def _items(est: Estimate) -> str:
    lo, hi = est.item_interval
    return f"± {est.item_se:.3f} [{lo:+.3f}, {hi:+.3f}]"


def _seeds(est: Estimate) -> str:
    return "—" if est.seed_se is None else f"± {est.seed_se:.3f}"


def markdown(*, effects: Sequence[Effect], trends: Sequence[Trend], core: pl.DataFrame, bootstrap: int,
             costs: Sequence[tuple[str, dict, str, Estimate]] = (),
             trunk: Sequence[tuple[str, float | None, int, Estimate]] = ()) -> list[str]:
    """The findings.md sections on uncertainty, core tasks, effects, trends, the text cost of images
    and the text-only trunk."""
    out = ["## How to read these numbers", "",
           f"Every number is a mean over runs, then ± its standard error over seeds, then ± the spread of a "
           f"bootstrap over eval items ({bootstrap} resamples) with its 95% interval. An effect or trend is "
           "stated only when it exceeds t(95%, Welch's df) standard errors over seeds *and* the items' "
           f"interval excludes 0; otherwise it reads \"{NOT_RESOLVED}\". Stable scores: 0 is chance.", ""]
    tests = sum(est.seed_se is not None for est in [e.estimate for e in effects] + [t.slope for t in trends]
                + [c[3] for c in costs])
    if tests:
        out += [f"This file makes {tests} such test{'s' * (tests != 1)}, each at 95%: about {tests / 20:.2g} of "
                "them may read \"stated\" by chance alone where there is no effect. A stated effect is a "
                "candidate until an independent run (other seeds, e.g. `vlmsweep demo --seed-offset 10`, or "
                "another machine) states it too.", ""]
    out += _core_lines(core)
    out += ["## Effects", ""]
    if not effects:
        out.append("No two values of intro_fraction, image_ratio, finetune_epochs or instruction_share to compare.")
    for label in dict.fromkeys(e.label for e in effects):
        rows = [e for e in effects if e.label == label]
        held = ", ".join(f"{k} {md_text(v)}" for k, v in rows[0].fixed.items() if k != "seed")
        out += [f"### {label[0].upper()}{label[1:]}", "",
                "Δ = the first minus the second" + (f", other axes at {held}." if held else "."), "",
                "| scale | score | Δ | seeds | items | runs | verdict |", "|---|---|---|---|---|---|---|"]
        out += [f"| {md_text(e.scale)} | {SCORE_NAMES[e.score]} | {e.estimate.value:+.3f} | {_seeds(e.estimate)} "
                f"| {_items(e.estimate)} | {e.n_a} vs {e.n_b} | {_verdict(e.estimate)} |" for e in rows] + [""]
    stated = [e for e in effects if e.estimate.resolved]
    if effects:
        out += ["Stated:" if stated else "No effect is resolved at this budget."]
        out += [f"- {md_text(e.scale)}: {e.label}: {SCORE_NAMES[e.score]} {e.estimate.text()}." for e in stated]
    out += ["", "## Trends over the intro fraction", ""]
    if trends:
        out += ["| scale | score | slope per unit f | seeds | items | runs (fractions) | verdict |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {md_text(t.scale)} | {SCORE_NAMES[t.score]} | {t.slope.value:+.3f} | {_seeds(t.slope)} "
                f"| {_items(t.slope)} "
                f"| {t.n_runs} ({', '.join(f'{f:g}' for f in t.fractions)}) | {_verdict(t.slope)} |" for t in trends]
        out += [f"- {md_text(t.scale)}: {SCORE_NAMES[t.score]} "
                f"{'rises' if t.slope.value > 0 else 'falls'} with the intro fraction: {t.slope.text()} per unit f."
                for t in trends if t.slope.resolved]
    else:
        out.append("Not measured: no scale has three or more intro fractions.")
    return out + [""] + _cost_lines(costs) + _trunk_lines(trunk)


def _cost_lines(costs: Sequence[tuple[str, dict, str, Estimate]]) -> list[str]:
    out = ["## Text cost", "", "Text score of the fully trained text-only trunk minus that of the configuration "
           "with the best VL (core) score (positive = images cost text).", ""]
    if not costs:
        return out + ["Not measured: the study has no evaluation of a fully trained text-only trunk "
                      "(checkpoint 1.0) together with a VL run at the same scale.", ""]
    out += ["| scale | best VL configuration | score | text cost | seeds | items | verdict |",
            "|---|---|---|---|---|---|---|"]
    out += [f"| {md_text(scale)} | {', '.join(f'{k} {v:g}' for k, v in cfg.items())} | {SCORE_NAMES[score]} | "
            f"{est.value:+.3f} | {_seeds(est)} | {_items(est)} | {_verdict(est)} |" for scale, cfg, score, est in costs]
    return out + [""]


def _trunk_lines(trunk: Sequence[tuple[str, float | None, int, Estimate]]) -> list[str]:
    if not trunk:
        return []
    out = ["## Text-only trunk", "", "Text stable score (all text tasks) of the trunk at each evaluated checkpoint.",
           "", "| scale | checkpoint | runs | text score | seeds | items |", "|---|---|---|---|---|---|"]
    out += [f"| {md_text(scale)} | {'final' if ck is None else f'{ck:g}'} | {n} | {est.value:+.3f} | {_seeds(est)} | "
            f"{_items(est)} |" for scale, ck, n, est in trunk]
    return out + [""]


def _core_lines(core: pl.DataFrame) -> list[str]:
    out = ["## Core tasks", "",
           "Tasks a scale learns, chosen by a rule fixed before any comparison: a text task is core when the "
           "fully trained text-only trunk scores above chance by more than "
           f"{CORE_Z:g} item standard errors; a VL task when the mean over every final model of the scale does "
           "(its level pooled over all cells, never a difference between them). Core scores average these "
           "tasks; the all-task averages stay beside them.", ""]
    if core.is_empty():
        return out + ["No evaluations to choose core tasks from.", ""]
    out += ["| scale | group | core tasks | left out (level ± items) | basis |", "|---|---|---|---|---|"]
    for (scale, group), rows in core.group_by("scale", "group", maintain_order=True):
        kept = ", ".join(md_text(t) for t in rows.filter("core")["task"]) or "none"
        left = ", ".join(f"{md_text(r['task'])} {r['level']:+.2f} ± {r['item_se']:.2f}"
                         for r in rows.filter(~pl.col("core")).iter_rows(named=True)) or "—"
        out.append(f"| {md_text(scale)} | {group} | {kept} | {left} | {md_text(rows['basis'][0])} |")
    return out + [""]
