"""Adaptive search: a multi-objective Optuna study over intro_fraction × image_ratio per scale.

Each trial is one grid cell (the study's other axes at their first value) whose branch → finetune →
eval chain joins the same DAG as the grid: it reuses the scale's single trunk (checkpointed on a
lattice of fractions) and any step already done, so a trial that lands on a grid cell costs nothing.
Trials are asked in batches of `workers` (Optuna ask/tell); a batch's steps run through the same
backends as `vlmsweep run` (`sweep.launch.run_and_wait`: the local worker pool, or SLURM jobs with
ordinary journal entries and `vlmsweep status`). The Optuna study lives in a JournalFileStorage
file under the root, so stopping and re-running `vlmsweep search` continues it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from models import stepfiles as sf
from models.steps import Step
from sweep.errors import UserError
from sweep.launch.devices import local_workers
from sweep.plan import Plan, plan_cells, plan_study, write_study_manifest
from sweep.spec import Cell, Study, load_study

OBJECTIVES = ("vl", "text")
SAMPLERS = ("tpe", "nsga2")
FINISHED = ("COMPLETE", "FAIL", "PRUNED")  # optuna TrialState names that TrialState.is_finished() accepts


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchSettings:
    trials: int  # trials this search runs in total over every scale (a re-run continues up to
    # this number; grid cells already evaluated join the study for free and do not count)
    objectives: tuple[str, ...] = OBJECTIVES  # stable-score averages to maximise
    sampler: str = "tpe"
    lattice: float = 0.05  # intro fractions are multiples of this (the trunk checkpoints each)
    ratio_range: tuple[float, float] = (0.01, 0.5)  # image_ratio is searched log-uniformly here
    workers: int = 2
    backend: str = "local"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives:
            raise UserError(f"--objectives: unknown {bad or 'empty'}; choose from {', '.join(OBJECTIVES)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}")
        if not (0 < self.lattice <= 0.5) or abs(round(1 / self.lattice) * self.lattice - 1) > 1e-9:
            raise UserError(f"--lattice must divide 1 (e.g. 0.05, 0.1), got {self.lattice}")
        lo, hi = self.ratio_range
        if not (0 < lo < hi <= 1):
            raise UserError(f"--ratio-range must satisfy 0 < lo < hi <= 1, got {lo},{hi}")

    @property
    def fractions(self) -> list[float]:
        n = round(1 / self.lattice)
        return [sf.round_fraction(i / n) for i in range(n + 1)]


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialRecord:
    scale: str
    number: int
    params: dict[str, float]
    values: tuple[float, ...] | None  # None while running or when the chain failed
    state: str  # COMPLETE | FAIL | RUNNING
    eval_step: str


def journal_path(root: Path, study: Study) -> Path:
    return root / "search" / f"{study.name}.journal"


def trial_cell(study: Study, scale: str, fraction: float, ratio: float) -> Cell:
    """A trial's grid cell: the searched values plus every other axis at its first value."""
    first = {axis: values[0] for axis, values in study.axes.items()}
    # The study file's rounding (sweep.spec), so a trial on a grid value is that grid cell; the
    # sampled ratio keeps 4 digits (a 5th would only make near-duplicate cells).
    return Cell(**(first | {"scale": scale, "intro_fraction": sf.round_fraction(fraction),
                            "image_ratio": sf.round_fraction(round(ratio, 4))}))


def eval_scores(root: Path, eval_step: Step) -> dict[str, float]:
    """Stable-score averages (primary metric − chance) per group from one eval step's evals.parquet."""
    import polars as pl

    from analysis.scores import stable_scores

    frame = pl.read_parquet(sf.paths_of(root, eval_step).evals)
    means = stable_scores(frame).group_by("group").agg(pl.col("stable_score").mean())
    return {row["group"]: float(row["stable_score"]) for row in means.iter_rows(named=True)}


class _Search:
    """The ask/tell loop over every scale's Optuna study."""

    def __init__(self, study: Study, root: Path, settings: SearchSettings,
                 log: Callable[[str], None]):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study, self.root, self.settings, self.log = study, root, settings, log
        path = journal_path(root, study)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.storage = JournalStorage(JournalFileBackend(str(path)))
        self.optuna = {scale: optuna.create_study(
            study_name=f"{study.name}:{scale}", storage=self.storage, load_if_exists=True,
            directions=["maximize"] * len(settings.objectives), sampler=self._sampler(scale))
            for scale in study.axes["scale"]}
        self.lattice = settings.fractions

    def _existing_trials(self, scale: str):
        import optuna

        try:
            return optuna.load_study(study_name=f"{self.study.name}:{scale}", storage=self.storage).trials
        except KeyError:
            return []

    def distributions(self) -> dict[str, Any]:
        import optuna

        lo, hi = self.settings.ratio_range
        return {"intro_fraction": optuna.distributions.FloatDistribution(0.0, 1.0, step=self.settings.lattice),
                "image_ratio": optuna.distributions.FloatDistribution(lo, hi, log=True)}

    def warm_start(self) -> int:
        """Tell each scale's study the grid cells already evaluated under the root (free points)."""
        import optuna

        grid, dists, added = plan_study(self.study, self.root), self.distributions(), 0
        lo, hi = self.settings.ratio_range
        for cell, ids in grid.cells.items():
            step = grid.by_id[ids["eval"]]
            on_lattice = any(abs(cell.intro_fraction - f) < 1e-9 for f in self.lattice)
            if (grid.status(step) != sf.DONE or not on_lattice or not lo <= cell.image_ratio <= hi
                    or cell != trial_cell(self.study, cell.scale, cell.intro_fraction, cell.image_ratio)):
                continue
            ostudy = self.optuna[cell.scale]
            params = {"intro_fraction": cell.intro_fraction, "image_ratio": cell.image_ratio}
            if any(t.params == params for t in ostudy.trials):
                continue
            scores = eval_scores(self.root, step)
            ostudy.add_trial(optuna.trial.create_trial(
                params=params, distributions=dists, user_attrs={"from_grid": True},
                values=[scores[o] for o in self.settings.objectives]))
            added += 1
        return added

    def _sampler(self, scale: str):
        import optuna

        # A continued search must not replay the first run's random draws: offset the seed by the
        # trials already in the journal.
        done = sum(1 for _ in self._existing_trials(scale))
        seed = self.settings.seed + sum(map(ord, scale)) + 1000 * done
        if self.settings.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, self.settings.workers * 2))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True)

    def finished(self) -> int:
        """Trials this search ran (grid cells added by warm_start do not count)."""
        return sum(1 for s in self.optuna.values() for t in s.trials
                   if t.state.is_finished() and not t.user_attrs.get("from_grid"))

    def plan(self, cells: Sequence[Cell]) -> Plan:
        return plan_cells(self.study, cells, self.root, trunk_lattice=self.lattice)

    def ask(self) -> tuple[Any, Any, str, Cell]:
        """The next trial, on the scale with the fewest trials so far."""
        scale = min(self.optuna, key=lambda s: (sum(not t.user_attrs.get("from_grid")
                                                     for t in self.optuna[s].trials), s))
        ostudy = self.optuna[scale]
        trial = ostudy.ask(self.distributions())
        fraction, ratio = trial.params["intro_fraction"], trial.params["image_ratio"]
        return ostudy, trial, scale, trial_cell(self.study, scale, fraction, ratio)

    def tell(self, ostudy, trial, eval_step: Step) -> tuple[float, ...] | None:
        import optuna

        try:
            scores = eval_scores(self.root, eval_step)
            values = tuple(scores[o] for o in self.settings.objectives)
        except (OSError, KeyError, ValueError) as exc:
            self.log(f"search: trial {trial.number} failed: {exc}")
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        ostudy.tell(trial, list(values))
        return values


def prepare_trunks(search: _Search, backend_name: str, workers: int) -> None:
    """Train (or extend with lattice checkpoints) every scale's trunk and encoder before trials."""
    from sweep.launch import run_and_wait, select_steps

    cells = [trial_cell(search.study, s, 1.0, search.settings.ratio_range[1])
             for s in search.study.axes["scale"]]
    plan = search.plan(cells)
    lattice_plan = replace(plan, steps=tuple(s for s in plan.steps if s.kind in ("trunk", "encoder")))
    todo = select_steps(lattice_plan, retry_failed=True, max_failures=search.study.backend.max_failures)
    if not todo:
        return
    search.log(f"search: training {len(todo)} shared step(s) first (trunks with checkpoints "
               f"every {search.settings.lattice:g} of T, encoders)")
    statuses = run_and_wait(lattice_plan, todo, backend_name, workers=workers)
    if any(statuses[st.step_id].state != sf.DONE for st in todo):
        raise UserError("search: a shared trunk or encoder step failed; see `vlmsweep status`")


def _chain(plan: Plan, cell: Cell) -> list[Step]:
    """The trial's own steps (branch, finetune, evals) that are not done yet."""
    steps = (plan.by_id[i] for i in dict.fromkeys(plan.cells[cell].values()))
    return [st for st in steps if st.kind not in ("trunk", "encoder") and plan.status(st) != sf.DONE]


def _run_batch(s: _Search, started: float) -> None:
    """Ask up to `workers` trials, run their missing steps through the backend, tell the scores."""
    from sweep.launch import run_and_wait, select_steps

    settings = s.settings
    asked = [s.ask() for _ in range(min(settings.workers, settings.trials - s.finished()))]
    plan = s.plan([cell for *_, cell in asked])
    for _, trial, scale, cell in asked:
        chain = _chain(plan, cell)
        s.log(f"search: trial {scale}#{trial.number} f={cell.intro_fraction:g} "
              f"ratio={cell.image_ratio:g}: {len(chain)} step(s) to run"
              + ("" if chain else " (reusing finished steps)"))
    todo = select_steps(plan, retry_failed=True, max_failures=s.study.backend.max_failures)
    if todo:
        statuses = run_and_wait(plan, todo, settings.backend, workers=settings.workers)
        for st in todo:
            if statuses[st.step_id].state != sf.DONE:
                s.log(f"search: {st.kind} {st.step_id} {statuses[st.step_id].state}: "
                      f"{statuses[st.step_id].reason}")
    for ostudy, trial, _, cell in asked:
        values = s.tell(ostudy, trial, plan.by_id[plan.cells[cell]["eval"]])
        if values is not None:
            s.log(f"search: trial {trial.number} → " + ", ".join(
                f"{o} {v:+.3f}" for o, v in zip(settings.objectives, values))
                + f"  ({s.finished()}/{settings.trials}, {time.monotonic() - started:.0f} s)")


def search(study: Study, root: Path, settings: SearchSettings,
           log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Run trials until `settings.trials` have finished; returns trials and the Pareto front."""
    s = _Search(study, root, settings, log)
    if warm := s.warm_start():
        log(f"search: {warm} grid cell(s) already evaluated under the root join the study for free")
    prepare_trunks(s, settings.backend, settings.workers)
    started = time.monotonic()
    while s.finished() < settings.trials:
        _run_batch(s, started)
    return summarize(s)


def summarize(s: _Search) -> dict:
    import optuna

    trials, front = [], []
    for scale, ostudy in s.optuna.items():
        for t in ostudy.trials:
            trials.append({"scale": scale, "number": t.number, "state": t.state.name,
                           "params": dict(t.params), "values": t.values,
                           "from_grid": bool(t.user_attrs.get("from_grid"))})
        complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            for t in ostudy.best_trials:
                front.append({"scale": scale, "number": t.number, "params": dict(t.params),
                              "values": t.values})
    return {"objectives": list(s.settings.objectives), "trials": trials, "pareto_front": front}


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float] = (0.0, 0.0)) -> float:
    """Area dominated by `points` (maximisation) above `reference` (chance level by default)."""
    pts = sorted(((x, y) for x, y in points if x > reference[0] and y > reference[1]), reverse=True)
    area, best_y = 0.0, reference[1]
    for x, y in pts:
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area


def compare_with_grid(study: Study, root: Path, result: dict) -> dict:
    """Hypervolume of the searched front vs the grid's front, with the runs each took per scale."""
    grid = plan_study(study, root)
    out = {}
    for scale in study.axes["scale"]:
        grid_points, grid_runs = [], 0
        for cell, ids in grid.cells.items():
            if cell.scale != scale:
                continue
            grid_runs += 1
            step = grid.by_id[ids["eval"]]
            if grid.status(step) == sf.DONE:
                scores = eval_scores(root, step)
                grid_points.append(tuple(scores[o] for o in result["objectives"]))
        found = [t["values"] for t in result["trials"]
                 if t["scale"] == scale and t["values"] and not t["from_grid"]]
        out[scale] = {"search_hypervolume": hypervolume_2d(found), "search_runs": len(found),
                      "grid_hypervolume": hypervolume_2d(grid_points), "grid_runs": grid_runs,
                      "grid_runs_done": len(grid_points)}
    return out


def run_search(args) -> int:
    study = load_study(args.study)
    root = Path(args.root).resolve() if args.root else study.root
    lo, hi = (float(x) for x in args.ratio_range.split(","))
    settings = SearchSettings(trials=args.trials, objectives=tuple(args.objectives.split(",")),
                              sampler=args.sampler, lattice=args.lattice, ratio_range=(lo, hi),
                              workers=local_workers(args.workers, study.backend), backend=args.backend,
                              seed=args.seed)
    if len(settings.objectives) != 2 and args.compare_grid:
        raise UserError("--compare-grid needs exactly two objectives")
    write_study_manifest(plan_study(study, root))
    result = search(study, root, settings)
    if args.compare_grid:
        result["grid_comparison"] = compare_with_grid(study, root, result)
        # The report's findings pick this up (analysis reads files under the root, never sweep).
        sf.write_json(root / "search" / f"{study.name}-comparison.json",
                      {"objectives": result["objectives"], "per_scale": result["grid_comparison"]}, indent=1)
    _write_search_manifest(study, root, settings, result)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        for p in result["pareto_front"]:
            vals = ", ".join(f"{o} {v:+.3f}" for o, v in zip(result["objectives"], p["values"]))
            print(f"{p['scale']:>6}  f={p['params']['intro_fraction']:<5g} "
                  f"ratio={p['params']['image_ratio']:<7.4f} {vals}")
        for scale, c in result.get("grid_comparison", {}).items():
            print(f"{scale}: hypervolume search {c['search_hypervolume']:.4f} ({c['search_runs']} runs) "
                  f"vs grid {c['grid_hypervolume']:.4f} ({c['grid_runs_done']}/{c['grid_runs']} runs done)")
    return 0


def _write_search_manifest(study: Study, root: Path, settings: SearchSettings, result: dict) -> None:
    """Register the searched cells as a study of their own so ingest, the app and report see them."""
    cells = list(dict.fromkeys(
        trial_cell(study, t["scale"], t["params"]["intro_fraction"], t["params"]["image_ratio"])
        for t in result["trials"] if t["state"] in FINISHED and "intro_fraction" in t["params"]))
    if cells:
        plan = plan_cells(study, cells, root, trunk_lattice=settings.fractions)
        write_study_manifest(replace(plan, study=replace(study, name=f"{study.name}-search")))
