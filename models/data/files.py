"""Where a data source's files are: shard lists in brace notation (`{00000..13999}` with zero
padding, `{a,b}` lists, as WebDataset and `braceexpand` read them) and globs.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable

from models.data.errors import DataError

GLOB_CHARS = "*?["

def expand(pattern: str) -> list[str]:
    """A brace pattern's names in order, as WebDataset reads them (`{00000..00002}` → 00000,
    00001, 00002; `{a,b}` → a, b); a pattern without braces is itself."""
    if "{" not in pattern:
        return [pattern]
    import braceexpand
    return list(braceexpand.braceexpand(pattern))


def resolve(name: str, patterns: Iterable[str]) -> list[str]:
    """The files a source's patterns name: braces expanded, globs listed, sorted, without
    repeats. DataError naming the pattern when it matches nothing or some brace names are missing."""
    found: list[str] = []
    for pattern in patterns:
        names = expand(pattern)
        matches = _resolve_names(names)
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


def _resolve_names(names: list[str]) -> list[list[str]]:
    """For each name: the files it matches (a glob's, sorted, or the name itself if it exists)."""
    return [sorted(glob.glob(n)) if any(c in n for c in GLOB_CHARS)
            else ([n] if os.path.exists(n) else []) for n in names]


def local_missing(patterns: Iterable[str]) -> list[str]:
    """Local patterns (braces expanded, globs left out) naming a file that does not exist here."""
    return [n for p in patterns if "://" not in p for n in expand(p)
            if not any(c in n for c in GLOB_CHARS) and not os.path.exists(n)]
