"""The results catalog: `ingest` builds `<root>/results.duckdb` from the per-step files, `connect` reads it.

Ingest writes a new catalog next to the old one and renames it over it (atomic on POSIX), so a
reader never sees a half-built catalog and never blocks ingest; a killed ingest leaves the old one.
Steps whose files are unchanged (same sizes and mtimes) are copied from the old catalog, not re-read;
so are their derived `curves` and `curve_points` rows, which are computed for re-read steps only.
"""

from __future__ import annotations

import fcntl
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import polars as pl

from analysis import steprows
from analysis.configid import config_ids
from analysis.dbpaths import duckdb_path, writable_database
from analysis.errors import AnalysisInputError, AnalysisWarning
from analysis.finite import refuse_nonfinite
from analysis.schema import CURVE_BUCKETS, SCHEMA_VERSION, STEPS, STUDIES, STUDY_STEPS, TABLES, create_all
from models import stepfiles as sf

CATALOG_NAME = "results.duckdb"


def catalog_path(root: str | Path) -> Path:
    return Path(root) / CATALOG_NAME


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestSummary:
    ingested: int  # steps read from their files this time
    reused: int  # unchanged steps copied from the previous catalog
    missing: tuple[tuple[str, str], ...]  # (kind, step_id) with neither result nor failure: not ingested
    failed: tuple[tuple[str, str], ...]  # (kind, step_id) with a failure: ingested as status failed
    skipped_corrupt: tuple[tuple[str, str, str], ...]  # (step_id, file, error)
    studies: tuple[str, ...]  # study manifests found under the root
    path: Path  # the catalog written
    seconds: float

    def __str__(self) -> str:
        lines = [f"catalog {self.path}: {self.ingested} steps read, {self.reused} unchanged reused, "
                 f"{len(self.failed)} failed, {len(self.missing)} missing (no result yet, not ingested), "
                 f"{len(self.skipped_corrupt)} files skipped as unreadable, in {self.seconds:.1f}s",
                 f"studies: {', '.join(self.studies) or '(no manifests)'}"]
        lines += [f"  missing {kind} {sid}" for kind, sid in self.missing[:20]]
        if len(self.missing) > 20:
            lines.append(f"  ... and {len(self.missing) - 20} more missing")
        lines += [f"  skipped {file} of step {sid}: {err}" for sid, file, err in self.skipped_corrupt]
        return "\n".join(lines)


CATALOG_ALIAS = "catalog"  # the name `attach` gives the catalog file inside its in-memory database


def connect(root_or_catalog: str | Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection to the current catalog (a root directory or the .duckdb file itself)."""
    path = Path(root_or_catalog)
    if path.is_dir():
        path = catalog_path(path)
    return _checked(path, lambda: duckdb.connect(str(path), read_only=read_only))


def attach(catalog: str | Path) -> duckdb.DuckDBPyConnection:
    """A private read-only connection to the catalog file: an in-memory DuckDB with the file
    attached and in use. Unlike `connect`, it never shares DuckDB's one database instance per path,
    so it reads the file that is at the path now (ingest swaps it) and closes independently."""
    path = Path(catalog)

    def opened() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        try:
            con.execute(f"ATTACH '{_sql_str(path)}' AS {CATALOG_ALIAS} (READ_ONLY)")
            con.execute(f"USE {CATALOG_ALIAS}")
        except duckdb.Error:
            con.close()
            raise
        return con
    return _checked(path, opened)


def _checked(path: Path, open_it: Callable[[], duckdb.DuckDBPyConnection]) -> duckdb.DuckDBPyConnection:
    """`open_it()` when `path` is a readable catalog of this schema; else one AnalysisInputError."""
    if not path.is_file():
        raise AnalysisInputError(f"{path}: no results catalog; run `vlmsweep ingest` first")
    try:
        con = open_it()
    except duckdb.Error as exc:  # not a DuckDB file (damaged, truncated, another format)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AnalysisInputError(f"{path}: not a readable results catalog ({reason}); run "
                                 "`vlmsweep ingest` to rebuild it from the step files") from None
    version = _schema_version(con)
    if version != SCHEMA_VERSION:
        con.close()
        raise AnalysisInputError(f"{path}: catalog schema version {version}, this code reads "
                                 f"{SCHEMA_VERSION}; run `vlmsweep ingest` to rebuild it")
    return con


def _schema_version(con: duckdb.DuckDBPyConnection, prefix: str = "") -> int | None:
    try:
        rows = con.execute(f"SELECT value FROM {prefix}catalog_info WHERE key = 'schema_version'").fetchall()
    except duckdb.Error:
        return None
    return int(rows[0][0]) if rows else None


def ingest(root: str | Path, *, progress: Callable[[int, int], None] | None = None,
           skip_unreadable: bool = False) -> IngestSummary:
    """Build the catalog from every step under root and swap it in; see the module docstring.

    A step file that cannot be read (garbled JSON, a truncated Parquet file) is an error naming it,
    and the previous catalog stays as it was: ingest never drops rows it held. With
    `skip_unreadable` the rest is ingested and such a step keeps the rows the previous catalog had
    for it (or, if it had none, whatever of it can be read, with the skipped files listed).
    """
    start = time.perf_counter()
    root = Path(root)
    if not (root / sf.STEPS_DIR).is_dir() and not (root / "studies").is_dir():
        raise AnalysisInputError(f"{root}: no steps/ or studies/ directory: not a results root")
    target = catalog_path(root)
    with _ingest_lock(root):
        _remove_stale_temporaries(root)
        tmp = sf.temp_path(target)
        try:
            summary = _build(root, target, tmp, progress, skip_unreadable)
            if tmp.exists():  # else nothing changed: the old catalog is already this one
                sf.publish(tmp, target)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)
    return IngestSummary(**summary, path=target, seconds=time.perf_counter() - start)


class _ingest_lock:
    """One ingest at a time per root (flock is released by the kernel if the process dies)."""

    def __init__(self, root: Path) -> None:
        self.path = root / f".{CATALOG_NAME}.lock"

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _remove_stale_temporaries(root: Path) -> None:
    """Delete what a killed ingest left; the lock guarantees no other ingest is writing one."""
    for leftover in root.glob(f".{CATALOG_NAME}.*.tmp*"):
        leftover.unlink(missing_ok=True)


def _reusable(target: Path) -> tuple[dict[str, str], str | None]:
    """(step_id -> signature of steps the old catalog holds completely, its manifests' signature)."""
    if not target.is_file():
        return {}, None
    try:
        with duckdb.connect(str(target), read_only=True) as old:
            if _schema_version(old) != SCHEMA_VERSION:
                return {}, None
            rows = old.execute("SELECT step_id, source_signature FROM steps WHERE skipped_files = ''").fetchall()
            sig = old.execute("SELECT value FROM catalog_info WHERE key = 'manifests'").fetchall()
    except duckdb.Error as exc:
        warnings.warn(f"{target}: previous catalog unreadable ({exc}); rebuilding from scratch",
                      AnalysisWarning, stacklevel=3)
        return {}, None
    return dict(rows), (sig[0][0] if sig else None)


def _manifests_signature(root: Path) -> str:
    files = sorted((root / "studies").glob("*.json")) if (root / "studies").is_dir() else []
    return "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def _build(root: Path, target: Path, tmp: Path, progress: Callable[[int, int], None] | None,
           skip_unreadable: bool) -> dict:
    steps = steprows.scan_steps(root)
    old, old_manifests = _reusable(target)
    manifests = _manifests_signature(root)
    finished = [s for s in steps if s.status != sf.MISSING]
    reuse = [s for s in finished if old.get(s.step_id) == s.signature]
    fresh = [s for s in finished if old.get(s.step_id) != s.signature]
    result = {"ingested": 0, "reused": len(reuse),
              "missing": tuple((s.kind, s.step_id) for s in steps if s.status == sf.MISSING),
              "failed": tuple((s.kind, s.step_id) for s in finished if s.status == sf.FAILED)}
    if not fresh and len(reuse) == len(old) and manifests == old_manifests:
        with connect(target) as con:  # unchanged: keep the catalog, report what it holds
            studies = [r[0] for r in con.execute("SELECT study FROM studies ORDER BY study").fetchall()]
        return {**result, "skipped_corrupt": (), "studies": tuple(studies)}
    with writable_database(tmp) as work:
        studies, rows, corrupt = _fill(duckdb.connect(str(work)), root, target, manifests, reuse, fresh,
                                       len(steps), progress, skip_unreadable)
    return {**result, "ingested": len(rows), "skipped_corrupt": tuple(corrupt), "studies": tuple(studies)}


def _fill(con: duckdb.DuckDBPyConnection, root: Path, target: Path, manifests: str,
          reuse: list[steprows.StepDir], fresh: list[steprows.StepDir], total: int,
          progress: Callable[[int, int], None] | None, skip_unreadable: bool
          ) -> tuple[list[str], list[dict], list[tuple[str, str, str]]]:
    """Write the new catalog into `con` (closed on return): (studies, fresh rows, unreadable files)."""
    try:
        create_all(con)
        con.execute("INSERT INTO catalog_info VALUES ('root', ?), ('manifests', ?)",
                    [str(root.resolve()), manifests])
        # No explicit transaction: the file is private until renamed (that is the commit), and
        # a failed bulk insert must roll back alone so the file-by-file fallback can run.
        if reuse:
            _copy_reused(con, target, [s.step_id for s in reuse])
        rows, corrupt = _read_fresh(fresh, len(reuse), total, progress)
        corrupt += _insert_fresh(con, rows, fresh)
        if corrupt and not skip_unreadable:
            raise _unreadable_error(corrupt, target)
        for sid, file, err in corrupt:  # skipped knowingly: say which
            _warn_corrupt(sid, file, err)
        studies = _insert_manifests(con, root)
        refuse_nonfinite(con)  # no NaN or inf is a result (analysis.finite)
        _insert_derived(con, [s.step_id for s in fresh])
        _keep_previous_rows(con, target, sorted({sid for sid, _, _ in corrupt}))
        _set_config_ids(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return studies, rows, corrupt


def _set_config_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Every step's config_id (analysis.configid), from the whole chain of steps now in the catalog."""
    rows = con.execute("SELECT step_id, kind, config_json, parents_json, code_salt FROM steps").fetchall()
    ids = config_ids(rows)
    if not ids:
        return
    con.register("config_ids", pl.DataFrame({"step_id": list(ids), "config_id": list(ids.values())}))
    try:
        con.execute("UPDATE steps SET config_id = c.config_id FROM config_ids c WHERE steps.step_id = c.step_id")
    finally:
        con.unregister("config_ids")


def _unreadable_error(corrupt: list[tuple[str, str, str]], target: Path) -> AnalysisInputError:
    """One line: the first unreadable file, how many more, and the two ways on."""
    _, _, first = corrupt[0]
    more = f" (and {len(corrupt) - 1} more unreadable file(s))" if len(corrupt) > 1 else ""
    return AnalysisInputError(f"{first}{more}; {target} is left as it was: repair or delete the file "
                              "(deleting result.json makes `run` recompute the step), or ingest the "
                              "rest with --skip-unreadable")


def _keep_previous_rows(con: duckdb.DuckDBPyConnection, target: Path, ids: list[str]) -> None:
    """Give the steps whose files could not be read the rows the previous catalog had for them."""
    if not ids or not target.is_file():
        return
    with duckdb.connect(str(target), read_only=True) as old:
        if _schema_version(old) != SCHEMA_VERSION:
            return
        held = {r[0] for r in old.execute("SELECT step_id FROM steps").fetchall()}
    kept = [sid for sid in ids if sid in held]
    if not kept:
        return
    con.register("kept_ids", pl.DataFrame({"step_id": kept}))
    for name in ("steps", "metrics", "evals", "curves", "curve_points"):
        con.execute(f"DELETE FROM {name} WHERE step_id IN (SELECT step_id FROM kept_ids)")
    con.unregister("kept_ids")
    _copy_reused(con, target, kept)


def _copy_reused(con: duckdb.DuckDBPyConnection, target: Path, ids: list[str]) -> None:
    con.execute(f"ATTACH '{_sql_str(target)}' AS old (READ_ONLY)")
    reuse_ids = pl.DataFrame({"step_id": ids})
    con.register("reuse_ids", reuse_ids)
    for name in ("steps", "metrics", "evals", "curves", "curve_points"):
        cols = ", ".join(f'"{c}"' for c in TABLES[name].column_names)
        con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM old.{name} "
                    "WHERE step_id IN (SELECT step_id FROM reuse_ids)")
    con.unregister("reuse_ids")
    con.execute("DETACH old")


def _insert_derived(con: duckdb.DuckDBPyConnection, fresh_ids: list[str]) -> None:
    """The curves and curve_points rows of the re-read steps (reused steps' rows were copied).

    Two passes over the fresh metric rows: the curve's step range first, then its buckets, with
    the same bucket formula `analysis.queries.curve_points` uses live.
    """
    if not fresh_ids:
        return
    con.register("fresh_ids", pl.DataFrame({"step_id": fresh_ids}, schema={"step_id": pl.String}))
    try:
        con.execute("INSERT INTO curves SELECT step_id, name, min(step), max(step), count(*) FROM metrics "
                    "WHERE step_id IN (SELECT step_id FROM fresh_ids) GROUP BY step_id, name")
        con.execute(
            f"INSERT INTO curve_points SELECT m.step_id, m.name, (m.step - c.first_step) * {CURVE_BUCKETS} "
            "// (c.last_step - c.first_step + 1) AS bucket, min(m.step), max(m.step), avg(m.step), "
            "avg(m.tokens), avg(m.value), min(m.value), max(m.value), count(*) "
            "FROM metrics m JOIN (SELECT * FROM curves WHERE step_id IN (SELECT step_id FROM fresh_ids)) c "
            "USING (step_id, name) GROUP BY ALL")
    finally:
        con.unregister("fresh_ids")


def _read_fresh(fresh: list[steprows.StepDir], done_before: int, total: int,
                progress: Callable[[int, int], None] | None) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The steps rows of changed steps; a step whose JSON is unreadable is listed, not ingested."""
    rows, corrupt = [], []
    for i, step in enumerate(fresh):
        try:
            rows.append(steprows.step_row(step))
        except AnalysisInputError as exc:
            bad = sf.FAILURE if step.status == sf.FAILED and sf.FAILURE in str(exc) else (
                sf.RESULT if sf.RESULT in str(exc) else sf.CONFIG)
            corrupt.append((step.step_id, bad, str(exc)))
        if progress is not None:
            progress(done_before + i + 1, total)
    return rows, corrupt


def _warn_corrupt(step_id: str, file: str, error: str) -> None:
    warnings.warn(f"step {step_id}: skipped {file}: {error}", AnalysisWarning, stacklevel=5)


def _insert_fresh(con: duckdb.DuckDBPyConnection, rows: list[dict],
                  fresh: list[steprows.StepDir]) -> list[tuple[str, str, str]]:
    """Insert steps rows and their Parquet files in bulk; unreadable files are skipped and named."""
    by_id = {r["step_id"]: r for r in rows}
    corrupt: list[tuple[str, str, str]] = []
    for file, table in steprows.TABLE_FOR_FILE.items():
        good = []
        for step in fresh:
            path = step.path / file
            if step.step_id not in by_id or by_id[step.step_id]["status"] != sf.DONE or not path.exists():
                continue
            try:
                steprows.check_parquet(path)
                good.append((step.step_id, str(path)))
            except AnalysisInputError as exc:
                corrupt.append((step.step_id, file, str(exc)))
        corrupt += _insert_parquet(con, table.name, good)
    for sid, file, _ in corrupt:
        by_id[sid]["skipped_files"] = ",".join(filter(None, [by_id[sid]["skipped_files"], file]))
    if rows:
        frame = pl.DataFrame(rows, schema=STEPS.polars_schema())
        con.register("new_steps", frame)
        con.execute("INSERT INTO steps SELECT * FROM new_steps")
        con.unregister("new_steps")
    return corrupt


def _insert_parquet(con: duckdb.DuckDBPyConnection, table: str, files: list[tuple[str, str]]
                    ) -> list[tuple[str, str, str]]:
    """One bulk read of every file; if some file's data pages are damaged, fall back to one by one."""
    if not files:
        return []
    try:
        _insert_parquet_files(con, table, files)
        return []
    except duckdb.Error:
        pass
    corrupt = []
    for sid, path in files:
        try:
            _insert_parquet_files(con, table, [(sid, path)])
        except duckdb.Error as exc:
            corrupt.append((sid, Path(path).name, f"{path}: {exc}"))
    return corrupt


def _insert_parquet_files(con: duckdb.DuckDBPyConnection, table: str, files: list[tuple[str, str]]) -> None:
    """INSERT ... SELECT over read_parquet of the files, tagging rows with their step_id."""
    columns = TABLES[table].columns
    paths = [duckdb_path(f[1]) for f in files]  # each file itself, never a glob
    read = "read_parquet($files, filename = true, union_by_name = true)"
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {read}", {"files": paths}).fetchall()}
    select = ", ".join(f"CAST({_column_sql(c, present)} AS {c.dtype})" for c in columns[1:])
    con.register("file_ids", pl.DataFrame({"step_id": [f[0] for f in files], "file": paths}))
    try:
        con.execute(f"INSERT INTO {table} SELECT f.step_id, {select} "
                    f"FROM {read} p JOIN file_ids f ON p.filename = f.file", {"files": paths})
    finally:
        con.unregister("file_ids")


def _column_sql(column, present: set[str]) -> str:
    """A column's value in a file row `p`; files from before a column existed get its legacy value."""
    if column.legacy is None:
        return f'p."{column.name}"'
    if column.name not in present:
        return column.legacy
    return f'coalesce(p."{column.name}", {column.legacy})'  # union_by_name: null in the older files


def _insert_manifests(con: duckdb.DuckDBPyConnection, root: Path) -> list[str]:
    names, study_rows, step_rows = [], [], []
    for path in sorted((root / "studies").glob("*.json")) if (root / "studies").is_dir() else []:
        study, rows = steprows.manifest_rows(path)
        names.append(study["study"])
        study_rows.append(study)
        step_rows += rows
    for table, rows in ((STUDIES, study_rows), (STUDY_STEPS, step_rows)):
        if rows:
            con.register("new_rows", pl.DataFrame(rows, schema=table.polars_schema()))
            con.execute(f"INSERT INTO {table.name} SELECT DISTINCT * FROM new_rows")
            con.unregister("new_rows")
    return names


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")
