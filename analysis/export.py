"""Export of figures: PNG, SVG and PDF through kaleido (one browser for the whole batch) and the
CSV of exactly what each figure plots, read back from its traces.

Kaleido 1.x drives a Chrome/Chromium; on Debian `apt-get install -y chromium` provides one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import plotly.graph_objects as go
import polars as pl

FORMATS = ("png", "svg", "pdf")


def figure_data(fig: go.Figure) -> pl.DataFrame:
    """Every plotted point: trace name, panel (x axis id), x, y, its error bar and marker symbol."""
    rows = []
    for trace in fig.data:
        xs, ys = getattr(trace, "x", None), getattr(trace, "y", None)
        if xs is None or ys is None:
            continue
        if trace.type == "heatmap":  # x columns by y rows of z
            rows += [{"trace": trace.name, "panel": "x", "x": _text(x), "y": float(y), "value": float(z),
                      "y_error": None, "symbol": None}
                     for j, y in enumerate(ys) for i, (x, z) in enumerate(zip(xs, trace.z[j]))]
            continue
        err = trace.error_y.array if trace.error_y is not None and trace.error_y.array is not None else None
        symbols = trace.marker.symbol if trace.marker is not None else None
        for k, (x, y) in enumerate(zip(xs, ys)):
            if x is None and y is None:  # a legend-only entry, not data
                continue
            rows.append({"trace": trace.name, "panel": trace.xaxis or "x", "x": _text(x), "y": _num(y),
                         "value": None, "y_error": None if err is None else _num(err[k]),
                         "symbol": symbols[k] if isinstance(symbols, (list, tuple)) else symbols})
    return pl.DataFrame(rows, schema={"trace": pl.String, "panel": pl.String, "x": pl.String, "y": pl.Float64,
                                      "value": pl.Float64, "y_error": pl.Float64, "symbol": pl.String})


def _text(v) -> str | None:
    """x as text: numbers, category names and timestamps share the CSV's x column."""
    return None if v is None else str(_num(v))


def _num(v) -> float | str | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def export_figures(figures: Iterable[tuple[str, go.Figure]], out_dir: str | Path,
                   formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write <name>.<fmt> for each format and <name>.csv for each figure; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, written = [], []
    for name, fig in figures:
        csv = out / f"{name}.csv"
        figure_data(fig).write_csv(csv)
        written.append(csv)
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            jobs.append({"fig": fig, "path": str(path), "opts": {"format": fmt}})
            written.append(path)
    if jobs:
        import kaleido  # imported here: only image export needs the browser bridge

        # one browser for the whole batch; no MathJax: it would be fetched from a CDN (no internet)
        kaleido.write_fig_from_object_sync(jobs, kopts={"mathjax": False, "n": 2})
    missing = [p for p in written if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise RuntimeError(f"figure export wrote nothing to {', '.join(map(str, missing))} "
                           "(kaleido needs Chrome/Chromium: apt-get install -y chromium)")
    return written
