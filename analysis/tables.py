"""Paper-ready text outputs: booktabs LaTeX tables and the findings.md summary of a study.

Pure functions from frames (and fits) to strings; `analysis.report` decides what to write where.
"""

from __future__ import annotations

import math
from typing import Sequence

import polars as pl

from analysis.findings import best_fraction_verdict
from analysis.mdtext import md_text
from analysis.surface import SurfaceFit, best_fraction_trend


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


def _interval(fit: SurfaceFit, axis: str, digits: str) -> str:
    lo_hi = fit.intervals.get(axis)
    return "" if lo_hi is None else f" [{lo_hi[0]:{digits}}, {lo_hi[1]:{digits}}]"


def best_table_rows(fits: list[SurfaceFit]) -> list[str]:
    """Markdown rows: best f and ratio with their interval (none when the runs cannot be resampled)."""
    rows = []
    for fit in fits:
        terms = f"{fit.n_runs} runs, terms {' '.join(fit.terms)}"
        best_f = f"{fit.best_intro_fraction:.2f}{_interval(fit, 'intro_fraction', '.2f')}"
        best_r = f"{fit.best_image_ratio:.3g}{_interval(fit, 'image_ratio', '.3g')}"
        rows.append(f"| {md_text(fit.scale)} | {fit.score} | {best_f} | {best_r} | {fit.best_score:.3f} | {terms} |")
    return rows


def findings_markdown(*, study: str | None, n_runs: int, missing: pl.DataFrame, fits: dict[str, list[SurfaceFit]],
                      fixed: dict, skipped: Sequence[tuple[str, str]], bootstrap: int, notes: Sequence[str] = (),
                      uncertain: Sequence[str] = ()) -> str:
    """findings.md: what the data allow, the effects, trends, text cost and trunk scores with their
    uncertainties (`uncertain`: analysis.findings' sections), best f and ratio per scale, and what
    is missing."""
    out = [f"# Findings: {md_text(study or 'all studies under the root')}", "",
           f"{n_runs} evaluated runs of the final models; {len(missing)} planned evaluations have no result"
           + (" (listed in `missing_cells.csv`)." if len(missing) else "."), ""]
    if fixed:
        out += ["Axes held at their most common value for these fits: "
                + ", ".join(f"{k} = {md_text(v)}" for k, v in fixed.items()) + ".", ""]
    if notes:
        out += ["## Limits of this study's data", ""] + [f"- {md_text(n)}" for n in notes] + [""]
    out += list(uncertain)
    out += ["## Best introduction fraction and image ratio per scale", ""]
    if any(fits.values()):
        out += [f"Quadratic response surface in (f, log ratio) per scale, with the terms the runs identify; "
                f"[95% bootstrap interval, {bootstrap} resamples] where there are more runs than terms.", "",
                "| scale | score | best f | best ratio | predicted score | fit |", "|---|---|---|---|---|---|"]
        for score_fits in fits.values():
            out += best_table_rows(score_fits)
    else:
        out.append("Not fitted: see the figures not drawn below.")
    for score, score_fits in fits.items():
        best = [(f.scale, f.params, f.best_intro_fraction, f.intervals.get("intro_fraction")) for f in score_fits]
        out.append(f"\n{best_fraction_verdict(best, best_fraction_trend(score_fits))} ({score})")
    if skipped:
        # figure names are our own ids (code); the reasons may hold task names (escaped)
        out += ["", "## Figures not drawn", ""] + [f"- `{name}`: {md_text(why)}" for name, why in skipped]
    return "\n".join(out) + "\n"
