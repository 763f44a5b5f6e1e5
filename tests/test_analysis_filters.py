"""`analysis.filters` (the app's sidebar filters) as plain data: frame filtering, SQL clauses and URL round trips."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from analysis.filters import FILTER_AXES, FilterError, Filters, format_value, parse_query_params
from analysis.schema import AXES

OPTIONS = {"scale": ["411m", "79m"], "intro_fraction": [0.0, 0.2, 0.8, 1.0], "seed": [0, 1]}


def test_filter_axes_are_catalog_columns():
    assert set(FILTER_AXES) <= set(AXES)


@pytest.mark.parametrize("value, text", [(0.8, "0.8"), (1.0, "1"), (0.0, "0"), (2, "2"), ("79m", "79m")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_query_params_round_trip():
    filters = Filters(study="paper", selections=(("scale", ("79m",)), ("intro_fraction", (0.8, 1.0))))
    params = filters.to_query_params()
    assert params == {"study": "paper", "scale": "79m", "intro_fraction": "0.8,1"}
    back, ignored = parse_query_params(params, OPTIONS, ["paper"])
    assert back == filters and ignored == []


def test_unknown_values_are_ignored_and_listed():
    filters, ignored = parse_query_params({"study": "gone", "scale": "79m,7b", "seed": "3", "bogus": "1"},
                                          OPTIONS, ["paper"])
    assert filters == Filters(selections=(("scale", ("79m",)),))
    assert ignored == ["study=gone", "scale=7b", "seed=3"]


def test_repeated_parameter_uses_the_last_value():
    filters, _ = parse_query_params({"seed": ["0", "1"]}, OPTIONS, [])
    assert filters.allowed("seed") == (1,)


def test_bad_filters_raise():
    with pytest.raises(FilterError, match="unknown axis 'colour'"):
        Filters(selections=(("colour", ("red",)),))
    with pytest.raises(FilterError, match="keeps no value"):
        Filters(selections=(("scale", ()),))


def _steps() -> pl.DataFrame:
    return pl.DataFrame({"step_id": ["t1", "b1", "b2", "b3"], "scale": ["79m", "79m", "79m", "411m"],
                         "intro_fraction": [None, 0.2, 0.8, 0.8]})


def test_apply_keeps_steps_the_axis_does_not_apply_to():
    kept = Filters(selections=(("intro_fraction", (0.8,)),)).apply(_steps())
    assert kept["step_id"].to_list() == ["t1", "b2", "b3"]
    kept = Filters(selections=(("intro_fraction", (0.8,)), ("scale", ("79m",)))).apply(_steps())
    assert kept["step_id"].to_list() == ["t1", "b2"]


def test_sql_clause_agrees_with_apply():
    con = duckdb.connect()
    con.register("steps", _steps())
    con.execute("CREATE TABLE study_steps AS SELECT 'paper' AS study, step_id FROM steps WHERE step_id <> 'b3'")
    for filters in (Filters(), Filters(selections=(("intro_fraction", (0.8,)),)),
                    Filters(study="paper", selections=(("scale", ("79m", "411m")), ("intro_fraction", (0.2, 0.8))))):
        where, params = filters.sql("s")
        got = con.sql(f"SELECT step_id FROM steps s WHERE TRUE{where} ORDER BY step_id", params=params or None).pl()
        expected = filters.apply(_steps())
        if filters.study:
            expected = expected.filter(pl.col("step_id") != "b3")
        assert got["step_id"].to_list() == sorted(expected["step_id"].to_list())


def test_sql_values_are_parameters_not_text():
    where, params = Filters(study="x'; DROP TABLE steps; --", selections=(("scale", ("a'b",)),)).sql()
    assert "DROP" not in where and "a'b" not in where
    assert params == {"study": "x'; DROP TABLE steps; --", "f_scale": ["a'b"]}
