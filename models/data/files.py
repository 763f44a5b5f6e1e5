"""Where a data source's files are and how they are opened: shard lists in brace notation
(`{00000..13999}` with zero padding, `{a,b}` lists, as WebDataset and `braceexpand` read them) and
globs, on local disk or in an object store (`s3://`, `gs://`, `http(s)://`) through fsspec.

One owner of opening a data file: readers call `open_binary(path, storage)`; `storage` is the
source's connection settings as sorted (key, value) pairs (`endpoint_url`), hashable and picklable
so that a reader bound to it can travel to a worker process. Remote reading needs the optional
extra `remote` (fsspec, s3fs, gcsfs, aiohttp); without it a study naming a remote path is refused
in one line.
"""

from __future__ import annotations

import glob
import importlib
import os
import posixpath
import re
from pathlib import Path
from typing import IO, Any, Iterable

from models.data.errors import BadRecordError, DataError

EXTRA = "remote"  # pip install 'vlmsweep[remote]'
# Scheme → the packages fsspec needs to read it.
REMOTE_SCHEMES: dict[str, tuple[str, ...]] = {"s3": ("fsspec", "s3fs"), "gs": ("fsspec", "gcsfs"),
                                              "http": ("fsspec", "aiohttp"), "https": ("fsspec", "aiohttp")}
STORAGE_OPTIONS = ("endpoint_url",)  # source options that say how to reach its store
GLOB_CHARS = "*?["
HTTP_PROBES = 64  # names of an http(s) brace list whose existence is checked (HTTP cannot list)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

Storage = tuple[tuple[str, Any], ...]


def scheme(path: str) -> str | None:
    """`s3` for `s3://b/k`; None for a local path."""
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def storage_of(source) -> Storage:
    """The source's connection settings for its store (empty for local files)."""
    return tuple((k, source.option(k)) for k in STORAGE_OPTIONS if source.option(k) is not None)


def path_problem(path: str) -> str | None:
    """Why a study may not name `path` (None: it may): an unknown scheme, a missing extra, a glob
    over HTTP (which cannot list a folder)."""
    s = scheme(path)
    if s is None:
        return None
    if s not in REMOTE_SCHEMES:
        return (f"{path!r}: scheme {s}:// is not readable; use a local path or one of "
                f"{', '.join(f'{k}://' for k in REMOTE_SCHEMES)}")
    if s in ("http", "https") and any(c in path for c in "*["):
        return f"{path!r}: an http(s) folder cannot be listed; name the shards with a brace list"
    return missing_extra(s)


def missing_extra(s: str) -> str | None:
    for package in REMOTE_SCHEMES[s]:
        try:
            importlib.import_module(package)
        except ImportError:
            return (f"{s}:// paths need the optional extra {EXTRA!r} (pip install "
                    f"'vlmsweep[{EXTRA}]'): {package} is not installed")
    return None


def filesystem(path: str, storage: Storage = ()):
    """The fsspec filesystem of a remote path (fsspec caches instances per process)."""
    s = scheme(path)
    problem = path_problem(path)
    if problem:
        raise DataError(problem)
    import fsspec
    options = dict(storage)
    if s == "s3" and options.get("endpoint_url") is None and os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if s not in ("s3",):
        options.pop("endpoint_url", None)
    return fsspec.filesystem(s, **options)


def open_binary(path: str, storage: Storage = ()) -> IO[bytes]:
    """A seekable binary file: local, or remote through fsspec (seek = a ranged read)."""
    if not is_remote(path):
        return open(path, "rb")
    return filesystem(path, storage).open(path, "rb")


def read_bytes(path: str, storage: Storage = ()) -> bytes:
    with open_binary(path, storage) as f:
        return f.read()


def size(path: str, storage: Storage = ()) -> int:
    if not is_remote(path):
        return Path(path).stat().st_size
    return int(filesystem(path, storage).size(path))


def is_file(path: str, storage: Storage = ()) -> bool:
    if not is_remote(path):
        return Path(path).is_file()
    return bool(filesystem(path, storage).isfile(path))


def join(folder: str, rel: str) -> str:
    """`rel` under `folder` (a local or remote folder), `..` folded; an absolute `rel` as is."""
    if is_remote(folder):
        s, rest = folder.split("://", 1)
        return f"{s}://{posixpath.normpath(posixpath.join(rest, rel))}"
    return os.path.normpath(os.path.join(folder, rel))


def parent(path: str) -> str:
    if is_remote(path):
        return path.rsplit("/", 1)[0]
    return str(Path(path).parent)


def within(path: str, root: str) -> bool:
    """Whether `path` lies inside folder `root`, judged on the names (`..` folded; a symlink
    inside the root is the root owner's choice and is followed)."""
    if is_remote(path) or is_remote(root):
        return is_remote(path) and join(path, ".").startswith(join(root, ".").rstrip("/") + "/")
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


def image_file(rel: str, shard: str, idx: int, *, base: str, root: str,
               allow_outside: bool = False) -> str:
    """A record's image path: relative to `base` (absolute or remote as is), and inside `root`
    unless the study allows otherwise (`allow_outside_root`). BadRecordError names the file, the
    record and the path: a record must not make a step open `/etc/passwd` or `../other/x.png`."""
    path = rel if is_remote(rel) or os.path.isabs(rel) else join(base, rel)
    if not allow_outside and not within(path, root):
        raise BadRecordError(shard, idx, f"field 'image': {rel!r} lies outside the image root {root!r} "
                                         "(set the source's image_root, or allow_outside_root = true)")
    return path


def expand(pattern: str) -> list[str]:
    """A brace pattern's names in order, as WebDataset reads them (`{00000..00002}` → 00000,
    00001, 00002; `{a,b}` → a, b); a pattern without braces is itself."""
    if "{" not in pattern:
        return [pattern]
    import braceexpand
    return list(braceexpand.braceexpand(pattern))


def resolve(name: str, patterns: Iterable[str], storage: Storage = ()) -> list[str]:
    """The files a source's patterns name: braces expanded, globs listed, sorted, without
    repeats. DataError naming the pattern when it matches nothing or some brace names are missing."""
    found: list[str] = []
    for pattern in patterns:
        names = expand(pattern)
        matches = _resolve_names(names, storage)
        missing = [n for n, hits in zip(names, matches) if not hits]
        if missing:
            raise DataError(_missing_line(name, pattern, names, missing))
        found += [m for hits in matches for m in hits]
    return sorted(dict.fromkeys(found))


def _missing_line(name: str, pattern: str, names: list[str], missing: list[str]) -> str:
    if len(names) == 1:
        return f"data source {name!r}: no file matches {pattern!r}"
    what = "no file matches" if len(missing) == len(names) else "some names do not exist in"
    return (f"data source {name!r}: {what} {pattern!r}: {len(missing)} of its {len(names)} "
            f"names are missing (first: {missing[0]!r})")


def _resolve_names(names: list[str], storage: Storage) -> list[list[str]]:
    """For each name: the files it matches (a glob's, sorted, or the name itself if it exists)."""
    if not names:
        return []
    if not is_remote(names[0]):
        return [sorted(glob.glob(n)) if any(c in n for c in GLOB_CHARS)
                else ([n] if os.path.exists(n) else []) for n in names]
    fs = filesystem(names[0], storage)
    s = scheme(names[0])
    if s in ("http", "https"):
        return _probe_http(fs, names)
    listed: dict[str, set[str]] = {}  # folder → its entries, each listed once (not one request a name)
    out = []
    for n in names:
        if any(c in n for c in GLOB_CHARS):
            out.append(sorted(f"{s}://{p}" for p in fs.glob(n)))
            continue
        folder = parent(n)
        if folder not in listed:
            try:
                listed[folder] = {f"{s}://{p.rstrip('/')}" for p in fs.ls(folder, detail=False)}
            except FileNotFoundError:
                listed[folder] = set()
        out.append([n] if n in listed[folder] else [])
    return out


def _probe_http(fs, names: list[str]) -> list[list[str]]:
    """HTTP cannot list: the first, the last and names spread between are checked; the others
    are taken as named (a missing one is then a read error naming it)."""
    step = max(1, len(names) // HTTP_PROBES)
    probe = set(range(0, len(names), step)) | {len(names) - 1}
    return [[n] if i not in probe or fs.exists(n) else [] for i, n in enumerate(names)]


def local_missing(patterns: Iterable[str]) -> list[str]:
    """Local patterns (braces expanded, globs left out) naming a file that does not exist here."""
    return [n for p in patterns if not is_remote(p) for n in expand(p)
            if not any(c in n for c in GLOB_CHARS) and not os.path.exists(n)]
