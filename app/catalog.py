"""Read-only access to a results catalog, reopened whenever `ingest` swaps in a new one.

Ingest replaces results.duckdb by rename, so the file's (inode, mtime, size) names a catalog
version. The app reads the version on every script run and keys its caches on it: a new catalog
shows up on the next interaction, without a restart.

Streamlit runs each browser session in its own thread, and ingest may swap the file at any
moment, so each thread has a connection of its own (`analysis.store.attach`: an in-memory DuckDB
with the catalog attached read-only, never DuckDB's one shared instance per path). A thread
reopens only its own connection when it meets a newer version; a query in another session keeps
reading the file it opened, and no session ever closes a connection another one is using.
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
from analysis.store import CATALOG_ALIAS, attach, catalog_path


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


_LOCAL = threading.local()  # this thread's (generation, version, connection)
_GENERATION = [0]  # bumped by close(): every thread reopens at its next query


def _connection(version: CatalogVersion) -> duckdb.DuckDBPyConnection:
    held = getattr(_LOCAL, "held", None)
    if held is None or held[:2] != (_GENERATION[0], version):
        if held is not None:
            held[2].close()  # this thread's own: nobody else uses it
        _LOCAL.held = None
        _LOCAL.held = (_GENERATION[0], version, attach(version.path))
    return _LOCAL.held[2]


def close() -> None:
    """Close this thread's catalog connection and make every other thread reopen its own at its
    next query (benchmarks time first visits; tests end cleanly)."""
    _GENERATION[0] += 1
    held = getattr(_LOCAL, "held", None)
    if held is not None:
        held[2].close()
        _LOCAL.held = None


@contextmanager
def cursor(version: CatalogVersion) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of this thread's connection to the catalog version (one per call: a result left
    half-fetched never blocks the next query); closed on exit."""
    cur = _connection(version).cursor()
    try:
        cur.execute(f"USE {CATALOG_ALIAS}")  # a cursor starts in the in-memory database
        yield cur
    finally:
        cur.close()


def query(version: CatalogVersion, sql: str, params: dict[str, Any] | list | None = None) -> pl.DataFrame:
    """Run one parameterised read query and return a polars frame."""
    with cursor(version) as cur:
        return cur.sql(sql, params=params or None).pl()

