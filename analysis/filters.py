"""Filters over the catalog: which study, and which values of each axis to keep (the app's sidebar
filters; the queries in `analysis.queries` take them).

A `Filters` value is plain data (testable without Streamlit): it filters polars frames, renders a
parameterised SQL clause, and round-trips through URL query parameters so a view can be shared.
A step that lacks an axis (a trunk has no intro_fraction) is kept by a filter on that axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import polars as pl

# The axes a user filters on, in sidebar order; the same names as the study file and the catalog.
FILTER_AXES: tuple[str, ...] = ("scale", "text_data", "image_data", "intro_fraction", "image_ratio",
                                "instruction_share", "finetune_epochs", "seed", "schedule")
STUDY_PARAM = "study"
SEPARATOR = ","


class FilterError(ValueError):
    """A filter names an axis the catalog does not have."""


def format_value(value: Any) -> str:
    """How a value appears in a URL and a widget: 0.8 -> '0.8', 2 -> '2', 1.0 -> '1'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class Filters:
    study: str | None = None  # a study name from the catalog; None = every step in the catalog
    # (axis, values kept) for each filtered axis; an axis not listed is not filtered.
    selections: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def __post_init__(self) -> None:
        for axis, values in self.selections:
            if axis not in FILTER_AXES:
                raise FilterError(f"filter on unknown axis {axis!r}; axes are {', '.join(FILTER_AXES)}")
            if not values:
                raise FilterError(f"filter on {axis!r} keeps no value; leave the axis out instead")

    def allowed(self, axis: str) -> tuple[Any, ...] | None:
        return dict(self.selections).get(axis)

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Rows whose axes are kept (null passes); axes the frame lacks are ignored."""
        for axis, values in self.selections:
            if axis in frame.columns:
                frame = frame.filter(pl.col(axis).is_null() | pl.col(axis).is_in(list(values)))
        return frame

    def sql(self, alias: str = "s") -> tuple[str, dict[str, Any]]:
        """` AND ...` restricting rows of `steps` (as alias) to the study and kept values; named params."""
        clause, params = [], {}
        if self.study is not None:
            clause.append(f"{alias}.step_id IN (SELECT step_id FROM study_steps WHERE study = $study)")
            params["study"] = self.study
        for axis, values in self.selections:
            # Axis names come from FILTER_AXES (checked above), never from the user; values are params.
            clause.append(f'({alias}."{axis}" IS NULL OR list_contains($f_{axis}, {alias}."{axis}"))')
            params[f"f_{axis}"] = list(values)
        return "".join(f" AND {c}" for c in clause), params

    def to_query_params(self) -> dict[str, str]:
        out = {} if self.study is None else {STUDY_PARAM: self.study}
        out.update({axis: SEPARATOR.join(format_value(v) for v in values) for axis, values in self.selections})
        return out

    def describe(self) -> str:
        parts = [f"{axis} ∈ {{{', '.join(format_value(v) for v in values)}}}" for axis, values in self.selections]
        return "; ".join(parts) or "no axis filters"


def parse_query_params(params: Mapping[str, str | Sequence[str]], options: Mapping[str, Sequence[Any]],
                       studies: Sequence[str]) -> tuple[Filters, list[str]]:
    """Filters from URL parameters, matching tokens against the catalog's values; also what was ignored.

    Unknown studies, axes and values are dropped (a shared link may outlive the catalog it was made
    on) and listed so the page can say so instead of failing.
    """
    ignored: list[str] = []
    study = _single(params.get(STUDY_PARAM))
    if study is not None and study not in studies:
        ignored.append(f"study={study}")
        study = None
    selections = []
    for axis in FILTER_AXES:
        raw = _single(params.get(axis))
        if raw is None:
            continue
        by_text = {format_value(v): v for v in options.get(axis, ())}
        tokens = [t for t in raw.split(SEPARATOR) if t != ""]
        ignored += [f"{axis}={t}" for t in tokens if t not in by_text]
        kept = tuple(dict.fromkeys(by_text[t] for t in tokens if t in by_text))
        if kept:
            selections.append((axis, kept))
    return Filters(study=study, selections=tuple(selections)), ignored


def _single(value: str | Sequence[str] | None) -> str | None:
    """The last value of a repeated parameter (as st.query_params does)."""
    if value is None or isinstance(value, str):
        return value
    return value[-1] if value else None

