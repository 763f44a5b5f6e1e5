"""Export of figures: always the CSV of exactly what each figure plots (read back from its traces)
and an interactive HTML page; PNG, SVG and PDF through kaleido (one browser for the whole batch)
when a Chrome/Chromium is found.

Kaleido 1.x drives a Chrome/Chromium; on Debian `apt-get install -y chromium` provides one, and
plotly's `plotly_get_chrome` downloads one. Without a browser the images are skipped with one line
saying so (`Exported.note`), never an error: a report must not fail for lack of a browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import plotly.graph_objects as go
import polars as pl

FORMATS = ("png", "svg", "pdf")  # image formats: rendered by a browser through kaleido
PLOTLY_JS = "plotly.min.js"  # written once beside the HTML pages, which load it from there
NO_BROWSER = ("no Chrome/Chromium found, so figures are CSV and interactive HTML only; for {formats} "
              "install one (Debian: `apt-get install chromium`, or run `plotly_get_chrome`) and re-run "
              "`vlmsweep report`, which adds them")


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


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido would drive (its own lookup: $BROWSER_PATH, plotly_get_chrome's
    download, the PATH, the usual install paths), or None when there is none."""
    try:
        from choreographer.browsers import Chromium
    except ImportError:  # kaleido's browser bridge missing: no image export either way
        return None
    path = Chromium.find_browser(skip_local=False)
    return str(path) if path and Path(path).is_file() else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Exported:
    written: tuple[Path, ...]  # every file written (CSV, HTML, plotly.js, images)
    note: str | None = None  # why image formats were skipped, when they were


def export_figures(figures: Iterable[tuple[str, go.Figure]], out_dir: str | Path,
                   formats: Iterable[str] = FORMATS) -> Exported:
    """Write <name>.csv and <name>.html for each figure, and <name>.<fmt> for each image format when
    a browser is found (else `note` says how to get one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures, formats = list(figures), tuple(formats)
    written: list[Path] = []
    for name, fig in figures:
        csv, html = out / f"{name}.csv", out / f"{name}.html"
        figure_data(fig).write_csv(csv)
        # plotly.js once in the folder, not 4.6 MB inside every page; works offline from disk
        fig.write_html(html, include_plotlyjs="directory", full_html=True)
        written += [csv, html]
    if figures:
        written.append(out / PLOTLY_JS)
    note = None
    if figures and formats:
        browser = find_browser()
        if browser is None:
            note = NO_BROWSER.format(formats="/".join(f.upper() for f in formats))
        else:
            written += _render_images(figures, out, formats, browser)
    return Exported(written=tuple(written), note=note)


def _render_images(figures: list[tuple[str, go.Figure]], out: Path, formats: tuple[str, ...],
                   browser: str) -> list[Path]:
    import kaleido  # imported here: only image export needs the browser bridge

    jobs = [{"fig": fig, "path": str(out / f"{name}.{fmt}"), "opts": {"format": fmt}}
            for name, fig in figures for fmt in formats]
    # one browser for the whole batch; no MathJax: it would be fetched from a CDN (no internet)
    kaleido.write_fig_from_object_sync(jobs, kopts={"mathjax": False, "n": 2})
    paths = [Path(j["path"]) for j in jobs]
    missing = [p for p in paths if not p.is_file() or p.stat().st_size == 0]
    if missing:
        raise RuntimeError(f"figure export through {browser} wrote nothing to "
                           f"{', '.join(map(str, missing))}")
    return paths
