"""The per-step files (the source of truth) and the study manifests as catalog rows, for ingest.

The files, their layout and status words are `models.stepfiles`' (torch-free): a step directory
is done, failed or missing by its files alone. Every bad value raises AnalysisInputError naming
the file and the field, so ingest can list the step as skipped and go on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import AnalysisInputError
from analysis.schema import AXIS_COLUMNS, EVALS, METRICS
from models import stepfiles as sf

STEP_KINDS = ("encoder", "trunk", "branch", "finetune", "eval")


@dataclass(frozen=True, kw_only=True, slots=True)
class StepDir:
    kind: str
    step_id: str
    path: Path
    status: str  # a models.stepfiles file state: done | failed | missing
    signature: str  # name:size:mtime of every file that feeds the catalog


def scan_steps(root: Path) -> list[StepDir]:
    """Every step directory under root, sorted by (kind, step_id) so ingest order is stable."""
    found = []
    for kind in STEP_KINDS:
        kind_dir = sf.kind_dir(root, kind)
        if not kind_dir.is_dir():
            continue
        for entry in sorted(os.scandir(kind_dir), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith("."):
                found.append(_step_dir(kind, Path(entry.path)))
    return found


def _step_dir(kind: str, path: Path) -> StepDir:
    parts = []
    for name in sf.SIGNED_FILES:
        try:
            st = os.stat(path / name)
        except FileNotFoundError:
            continue
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return StepDir(kind=kind, step_id=path.name, path=path, status=sf.dir_state(path),
                   signature="|".join(parts))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return sf.read_json(path)
    except sf.StepFileError as exc:
        raise AnalysisInputError(str(exc)) from exc


def coerce(value: Any, dtype: str, where: Path, field: str) -> Any:
    """A JSON value as the catalog dtype; None stays None; anything else raises naming the field."""
    if value is None:
        return None
    try:
        if dtype == "VARCHAR":
            return value if isinstance(value, str) else json.dumps(value)
        if dtype == "BIGINT":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if dtype == "DOUBLE":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if dtype == "TIMESTAMP":
            ts = datetime.fromisoformat(str(value))
            return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts
    except (TypeError, ValueError):
        pass
    raise AnalysisInputError(f"{where}: field {field!r} must be {dtype.lower()}, got {value!r}")


def axis_values(meta: Any, where: Path) -> dict[str, Any]:
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise AnalysisInputError(f"{where}: field 'meta' must be an object")
    return {name: coerce(meta.get(name), dtype, where, f"meta.{name}") for name, dtype, _ in AXIS_COLUMNS}


def parent_id(parents: Any, where: Path) -> str | None:
    """The step this one continues or evaluates: its first parent that is not the encoder."""
    if not isinstance(parents, list) or not all(isinstance(p, list) and len(p) == 2 for p in parents):
        raise AnalysisInputError(f"{where}: field 'parents' must be a list of [role, step_id] pairs")
    return next((str(sid) for role, sid in parents if role != "encoder"), None)


def step_row(step: StepDir) -> dict[str, Any]:
    """The `steps` row of a done or failed step (raises AnalysisInputError on bad input)."""
    cfg_path = sf.StepPaths(step.path).config
    cfg = read_json(cfg_path)
    if cfg.get("step_id") not in (None, step.step_id):
        raise AnalysisInputError(f"{cfg_path}: field 'step_id' is {cfg['step_id']!r}, "
                                 f"but the directory is {step.step_id}")
    meta = cfg.get("meta") or {}
    row: dict[str, Any] = {"step_id": step.step_id, "kind": step.kind,
                           "parent_id": parent_id(cfg.get("parents", []), cfg_path),
                           "parents_json": json.dumps(cfg.get("parents", [])),
                           **axis_values(meta, cfg_path),
                           "planned_tokens": coerce(meta.get("tokens"), "BIGINT", cfg_path, "meta.tokens"),
                           "config_json": json.dumps(cfg.get("config", {}), sort_keys=True),
                           "meta_json": json.dumps(meta, sort_keys=True),
                           "source_signature": step.signature, "skipped_files": ""}
    row.update(_result_fields(step) if step.status == sf.DONE else _failure_fields(step))
    return row


def _result_fields(step: StepDir) -> dict[str, Any]:
    path = sf.StepPaths(step.path).result
    res = read_json(path)
    params = res.get("params") or {}
    if not isinstance(params, dict):
        raise AnalysisInputError(f"{path}: field 'params' must be an object of counts by group")
    fields = {"status": sf.DONE,
              **{f"params_{g}": coerce(params.get(g), "BIGINT", path, f"params.{g}")
                 for g in ("embedding", "non_embedding", "lm_total", "vision", "projector")}}
    for name, dtype in (("tokens", "BIGINT"), ("flops", "DOUBLE"), ("wall_time_s", "DOUBLE"),
                        ("peak_memory_bytes", "BIGINT"), ("started_at", "TIMESTAMP"),
                        ("finished_at", "TIMESTAMP"), ("code_salt", "BIGINT"), ("git_commit", "VARCHAR"),
                        ("hostname", "VARCHAR"), ("device", "VARCHAR")):
        fields[name] = coerce(res.get(name), dtype, path, name)
    return fields


def _failure_fields(step: StepDir) -> dict[str, Any]:
    try:
        fail = sf.read_failure(step.path)
    except sf.StepFileError as exc:
        raise AnalysisInputError(str(exc)) from exc
    path = sf.StepPaths(step.path).failure
    return {"status": sf.FAILED, "failure_reason": fail.reason, "error": fail.error,
            "finished_at": coerce(fail.finished_at, "TIMESTAMP", path, "finished_at")}


def check_parquet(path: Path) -> None:
    """Read the footer and check the columns (cheap); raises AnalysisInputError naming the file."""
    expected = {name: _KIND[arrow] for name, arrow in sf.TABLE_COLUMNS[path.name]}
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise AnalysisInputError(f"{path}: not a readable Parquet file ({exc})") from exc
    legacy = {c.name for c in TABLE_FOR_FILE[path.name].columns if c.legacy is not None}
    for col, kind in expected.items():
        if col not in schema.names:
            if col in legacy:  # a file from before the column existed: ingest fills it in
                continue
            raise AnalysisInputError(f"{path}: missing column {col!r}")
        t = schema.field(col).type
        ok = {"int": pa.types.is_integer(t), "float": pa.types.is_floating(t) or pa.types.is_integer(t),
              "string": pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
              "bool": pa.types.is_boolean(t)}
        if not ok[kind]:
            raise AnalysisInputError(f"{path}: column {col!r} has type {t}, expected {kind}")


def manifest_rows(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A study manifest as one `studies` row and its `study_steps` rows."""
    man = read_json(path)
    name = man.get("name")
    if not isinstance(name, str) or not name:
        raise AnalysisInputError(f"{path}: field 'name' must be a non-empty string")
    steps = man.get("steps")
    if not isinstance(steps, list):
        raise AnalysisInputError(f"{path}: field 'steps' must be a list")
    rows = []
    for i, s in enumerate(steps):
        if not isinstance(s, dict) or not isinstance(s.get("step_id"), str) or s.get("kind") not in STEP_KINDS:
            raise AnalysisInputError(f"{path}: steps[{i}] needs a string 'step_id' and a known 'kind'")
        rows.append({"study": name, "step_id": s["step_id"], "kind": s["kind"],
                     **axis_values(s.get("meta"), path), "meta_json": json.dumps(s.get("meta") or {}, sort_keys=True)})
    study = {"study": name, "study_file": coerce(man.get("study_file"), "VARCHAR", path, "study_file"),
             "written_at": coerce(man.get("written_at"), "VARCHAR", path, "written_at"),
             "axes_json": json.dumps(man.get("axes") or {}, sort_keys=True),
             "stable_score": _stable_definition(man.get("stable_score", sf.STABLE_DEFINITIONS[0]), path)}
    return study, rows


def _stable_definition(value, path) -> str:
    if value not in sf.STABLE_DEFINITIONS:  # manifests from before the option say nothing: difference
        raise AnalysisInputError(f"{path}: field 'stable_score' must be one of {', '.join(sf.STABLE_DEFINITIONS)}, "
                                 f"got {value!r}")
    return value


TABLE_FOR_FILE = {sf.METRICS: METRICS, sf.EVALS: EVALS}
# what check_parquet accepts of each Arrow type
_KIND = {"int64": "int", "float64": "float", "string": "string", "bool_": "bool"}
