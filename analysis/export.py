"""Export of figures: PNG, SVG and PDF through kaleido (one browser for the whole batch) and the
CSV of exactly what each figure plots, read back from its traces.

Kaleido 1.x drives a Chrome/Chromium; on Debian `apt-get install -y chromium` provides one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import plotly.graph_objects as go
import polars as pl

FORMATS = ("png", "svg", "pdf")


SCHEMA = {"trace": pl.String, "panel": pl.String, "x": pl.String, "y": pl.Float64, "y_category": pl.String,
          "value": pl.Float64, "y_error": pl.Float64, "symbol": pl.String, "label": pl.String}


def figure_data(fig: go.Figure) -> pl.DataFrame:
    """Every plotted point: trace name, panel (x axis id), x, y (or y_category when y is a category
    name), a heatmap cell's value, the error bar, marker symbol and the point's text label."""
    rows = []
    for trace in fig.data:
        xs, ys = getattr(trace, "x", None), getattr(trace, "y", None)
        if xs is None or ys is None:
            continue
        if trace.type == "heatmap":
            rows += _heatmap_rows(trace)
            continue
        err = trace.error_y.array if trace.error_y is not None and trace.error_y.array is not None else None
        symbols = trace.marker.symbol if trace.marker is not None else None
        hover = getattr(trace, "hovertext", None)
        labels = _per_point(hover if hover is not None else getattr(trace, "text", None))
        for k, (x, y) in enumerate(zip(xs, ys)):
            if _missing(x) and _missing(y):  # a legend-only entry or a gap between curves, not data
                continue
            rows.append({"trace": trace.name, "panel": trace.xaxis or "x", "x": _text(x), **_y(y),
                         "value": None, "y_error": None if err is None else _num(err[k]),
                         "symbol": symbols[k] if isinstance(symbols, (list, tuple)) else symbols,
                         "label": labels(k)})
    return pl.DataFrame(rows, schema=SCHEMA)


def _heatmap_rows(trace) -> list[dict]:
    """One row per cell (x columns by y rows of z); axes may be numbers or category names."""
    text = trace.text if isinstance(trace.text, (list, tuple)) else None
    return [{"trace": trace.name, "panel": "x", "x": _text(x), **_y(y), "value": None if z is None else float(z),
             "y_error": None, "symbol": None, "label": None if text is None else str(text[j][i])}
            for j, y in enumerate(trace.y) for i, (x, z) in enumerate(zip(trace.x, trace.z[j]))]


def _y(v) -> dict:
    y = _num(v)
    return {"y": None, "y_category": y} if isinstance(y, str) else {"y": y, "y_category": None}


def _per_point(text):
    """k -> the k-th point's label, for per-point text, one text for every point, or none."""
    if isinstance(text, (list, tuple, np.ndarray)):
        return lambda k: None if text[k] is None else str(text[k])
    return lambda k: text if isinstance(text, str) and text else None


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


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


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
