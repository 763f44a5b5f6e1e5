"""The adaptive search's comparison with the grid, for findings.md.

`vlmsweep search --compare-grid` writes <root>/search/<study>-comparison.json:
{"objectives": [...], "per_scale": {scale: {"search_hypervolume", "search_runs", "grid_hypervolume",
"grid_runs", "grid_runs_done"}}}. analysis reads that file, never sweep's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import AnalysisInputError
from analysis.mdtext import md_text

FIELDS = ("search_hypervolume", "search_runs", "grid_hypervolume", "grid_runs", "grid_runs_done")


@dataclass(frozen=True, kw_only=True, slots=True)
class SearchComparison:
    study: str
    path: Path
    objectives: tuple[str, ...]
    per_scale: dict[str, dict[str, float]]  # scale -> FIELDS


def comparison_path(root: str | Path, study: str) -> Path:
    return Path(root) / "search" / f"{study}-comparison.json"


def load_comparisons(root: str | Path, study: str | None) -> list[SearchComparison]:
    """The study's comparison (every study's when study is None); [] when search never compared."""
    folder = Path(root) / "search"
    paths = ([comparison_path(root, study)] if study is not None
             else sorted(folder.glob("*-comparison.json")) if folder.is_dir() else [])
    return [_read(p, p.name[:-len("-comparison.json")]) for p in paths if p.is_file()]


def _read(path: Path, study: str) -> SearchComparison:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise AnalysisInputError(f"{path}: cannot read the search comparison ({exc})") from None
    objectives, per_scale = raw.get("objectives") if isinstance(raw, dict) else None, None
    if not isinstance(objectives, list) or not all(isinstance(o, str) for o in objectives):
        raise AnalysisInputError(f"{path}: field 'objectives' must be a list of objective names")
    per_scale = raw.get("per_scale")
    if not isinstance(per_scale, dict):
        raise AnalysisInputError(f"{path}: field 'per_scale' must map each scale to its comparison")
    out = {}
    for scale, rec in per_scale.items():
        for name in FIELDS:
            value = rec.get(name) if isinstance(rec, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AnalysisInputError(f"{path}: per_scale.{scale}.{name} must be a number, got {value!r}")
        out[str(scale)] = {name: rec[name] for name in FIELDS}
    return SearchComparison(study=study, path=path, objectives=tuple(objectives), per_scale=out)


def search_markdown(comparisons: list[SearchComparison]) -> list[str]:
    """findings.md lines: per scale, the hypervolume the search reached against the grid's, and the
    runs each took ([] when there is no comparison)."""
    if not comparisons:
        return []
    out = ["## Adaptive search vs the grid", ""]
    for comp in comparisons:
        out += [f"Study {md_text(comp.study)}: hypervolume of the Pareto front over ({', '.join(comp.objectives)}) "
                "above chance, from `vlmsweep search --compare-grid`.", "",
                "| scale | search hypervolume | search runs | grid hypervolume | grid runs done / planned "
                "| search / grid hypervolume |", "|---|---|---|---|---|---|"]
        for scale, c in comp.per_scale.items():
            ratio = f"{c['search_hypervolume'] / c['grid_hypervolume']:.2f}" if c["grid_hypervolume"] > 0 else "–"
            out.append(f"| {md_text(scale)} | {c['search_hypervolume']:.4f} | {c['search_runs']:g} | "
                       f"{c['grid_hypervolume']:.4f} | {c['grid_runs_done']:g} / {c['grid_runs']:g} | {ratio} |")
        out.append("")
    return out
