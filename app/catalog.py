"""Read-only access to a results catalog, reopened whenever `ingest` swaps in a new one.

Ingest replaces results.duckdb by rename, so the file's (inode, mtime, size) names a catalog
version. The app reads the version on every script run and keys its caches on it: a new catalog
shows up on the next interaction, without a restart. Queries run on per-call cursors because a
DuckDB connection is not thread-safe and Streamlit runs each browser session in its own thread.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb
import polars as pl

from analysis.errors import AnalysisInputError
from analysis.store import catalog_path, connect


@dataclass(frozen=True, kw_only=True, slots=True)
class CatalogVersion:
    root: Path  # the results root (holds steps/, studies/, launch/ and the catalog)
    path: Path  # the catalog file
    inode: int  # a swapped-in catalog is a new file, hence a new inode
    mtime_ns: int
    size: int


def catalog_version(root: str | Path) -> CatalogVersion:
    """The catalog under root as it is now; a clear error when there is none."""
    root = Path(root)
    path = catalog_path(root)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AnalysisInputError(f"{path}: no results catalog; run `vlmsweep ingest` on the study "
                                 "first") from None
    return CatalogVersion(root=root, path=path, inode=st.st_ino, mtime_ns=st.st_mtime_ns, size=st.st_size)


class _Current:
    """The one open connection of this process, for the newest version seen."""

    lock = threading.Lock()
    version: CatalogVersion | None = None
    con: duckdb.DuckDBPyConnection | None = None


def _connection(version: CatalogVersion) -> duckdb.DuckDBPyConnection:
    with _Current.lock:
        if _Current.version != version or _Current.con is None:
            if _Current.con is not None:
                # DuckDB shares one database instance per path within a process: while the old
                # connection lives, connecting to the same path would return the old catalog.
                _Current.con.close()
            _Current.con = connect(version.path, read_only=True)
            _Current.version = version
        return _Current.con


def close() -> None:
    """Close the process's catalog connection; the next query reopens it (benchmarks time first visits)."""
    with _Current.lock:
        if _Current.con is not None:
            _Current.con.close()
        _Current.con, _Current.version = None, None


@contextmanager
def cursor(version: CatalogVersion) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor on the catalog version; closed on exit."""
    cur = _connection(version).cursor()
    try:
        yield cur
    finally:
        cur.close()


def query(version: CatalogVersion, sql: str, params: dict[str, Any] | list | None = None) -> pl.DataFrame:
    """Run one parameterised read query and return a polars frame."""
    with cursor(version) as cur:
        return cur.sql(sql, params=params or None).pl()

