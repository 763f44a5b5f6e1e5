"""Paths as DuckDB must be given them: a results root may contain any character.

DuckDB reads `? * [ ] { }` in a file path given to read_parquet as a glob (`a?b/x.parquet` also
reads `aXb/x.parquet`): such a path is passed through `/proc/self/fd/<fd>/<name>`, where fd is an
open handle of its directory — the same file, with no character DuckDB interprets. And DuckDB
reads a `?` in a database path as the start of options, writing its WAL to `a.wal?b/…` (it
resolves every link first, so no other spelling helps): a database is written elsewhere, then
copied (`writable_database`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

_SPECIAL = set("?*[]{}")
_DIRS: dict[str, int] = {}  # directory -> an open fd of it (one per directory, kept open)
_LOCK = threading.Lock()


def duckdb_path(path: str | Path) -> str:
    """`path` (a database or data file) spelled so that DuckDB opens exactly that file."""
    text = str(path)
    if not _SPECIAL & set(text) or not os.path.isdir("/proc/self/fd"):
        return text
    folder, name = os.path.split(os.path.abspath(text))
    if _SPECIAL & set(name):
        return text  # a file name of its own with these characters: nothing to route around
    return f"/proc/self/fd/{_dir_fd(folder)}/{name}"


def _dir_fd(folder: str) -> int:
    with _LOCK:
        fd = _DIRS.get(folder)
        if fd is not None:
            try:
                held, now = os.fstat(fd), os.stat(folder)
                if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                    return fd
            except OSError:
                pass
            os.close(fd)  # the directory was replaced (or removed): open the current one
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _DIRS[folder] = fd
        return fd


@contextlib.contextmanager
def writable_database(path: Path) -> Iterator[Path]:
    """Where DuckDB can write the database that must end up at `path`.

    `path` itself, unless its directory has a `?`: DuckDB would then write the database's WAL
    to a mangled path and fail to commit. Such a database is built in a private temporary
    directory and copied to `path` once closed (a closed, checkpointed DuckDB file is complete).
    """
    if "?" not in str(path.parent):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="vlmsweep-catalog-") as folder:
        work = Path(folder) / "catalog.duckdb"
        yield work
        if work.exists():
            shutil.copyfile(work, path)
