"""Paper-ready text outputs: booktabs LaTeX tables and the findings.md summary of a study.

Pure functions from frames (and fits) to strings; `analysis.report` decides what to write where.
"""

from __future__ import annotations

import math
from typing import Sequence

import polars as pl

from analysis.surface import SurfaceFit


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def pm(mean: float | None, stderr: float | None, digits: int = 3, tex: bool = False) -> str:
    """'0.123 ± 0.004' (or just the mean when there is one run; '—' when missing)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{mean:.{digits}f}"
    sign = r"$\pm$" if tex else "±"
    return f"{mean:.{digits}f} {sign} {stderr:.{digits}f}"


def latex_table(frame: pl.DataFrame, columns: Sequence[tuple[str, str]], *, caption: str, label: str,
                scores: Sequence[str] = ()) -> str:
    """A booktabs table: `columns` are (column, header); each score s shows s_mean ± s_stderr."""
    headers = [h for _, h in columns] + [s.replace("_score", "") for s in scores]
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(columns) + "r" * len(scores) + "}",
             r"\toprule", " & ".join(_tex(h) for h in headers) + r" \\", r"\midrule"]
    for row in frame.iter_rows(named=True):
        cells = [_tex(_fmt(row[c])) for c, _ in columns]
        cells += [pm(row.get(f"{s}_mean"), row.get(f"{s}_stderr"), tex=True) for s in scores]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex(caption)}}}", rf"\label{{{label}}}",
              r"\end{table}", ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def best_table_rows(fits: list[SurfaceFit]) -> list[str]:
    rows = []
    for fit in fits:
        f_lo, f_hi = fit.intervals.get("intro_fraction", (math.nan, math.nan))
        r_lo, r_hi = fit.intervals.get("image_ratio", (math.nan, math.nan))
        rows.append(f"| {fit.scale} | {fit.score} | {fit.best_intro_fraction:.2f} [{f_lo:.2f}, {f_hi:.2f}] | "
                    f"{fit.best_image_ratio:.3g} [{r_lo:.3g}, {r_hi:.3g}] | {fit.best_score:.3f} | {fit.n_runs} |")
    return rows


def findings_markdown(*, study: str | None, n_runs: int, missing: pl.DataFrame, fits: dict[str, list[SurfaceFit]],
                      trend: dict[str, float | None], late_vs_full: pl.DataFrame | None,
                      text_cost: pl.DataFrame | None, fixed: dict, skipped: Sequence[tuple[str, str]],
                      bootstrap: int) -> str:
    """findings.md: best f and ratio per scale, 80% vs 100%, the text cost, and what is missing."""
    out = [f"# Findings: {study or 'all studies under the root'}", "",
           f"{n_runs} evaluated runs of the final models; {len(missing)} planned evaluations have no result"
           + (" (listed in `missing_cells.csv`)." if len(missing) else "."), ""]
    if fixed:
        out += ["Axes held at their most common value for these fits: "
                + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + ".", ""]
    out += ["## Best introduction fraction and image ratio per scale", "",
            f"Quadratic response surface in (f, log ratio) per scale; [95% bootstrap interval, {bootstrap} resamples].", "",
            "| scale | score | best f | best ratio | predicted score | runs |", "|---|---|---|---|---|---|"]
    for score, score_fits in fits.items():
        out += best_table_rows(score_fits)
    for score, slope in trend.items():
        if slope is not None:
            out.append(f"\nBest f moves by {slope:+.3f} per tenfold increase in parameters ({score}).")
    out += ["", "## Images at 80% vs at 100% of pre-training", ""]
    out += _frame_md(late_vs_full) if late_vs_full is not None and len(late_vs_full) else \
        ["Not measured: the study has no runs at both f = 0.8 and f = 1.0."]
    out += ["", "## Text cost", "", "Text score of the text-only trunk minus the text score of the best VL "
            "configuration (positive = images cost text performance).", ""]
    out += _frame_md(text_cost) if text_cost is not None and len(text_cost) else \
        ["Not measured: the study has no text-only trunk evaluations."]
    if skipped:
        out += ["", "## Figures not drawn", ""] + [f"- `{name}`: {why}" for name, why in skipped]
    return "\n".join(out) + "\n"


def _frame_md(frame: pl.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else _fmt(v) for v in row) + " |")
    return lines
