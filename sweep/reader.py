"""A strict reader over parsed TOML tables that knows each value's key path.

Every access declares the type and range it expects; `finish()` rejects keys nobody asked for.
All failures raise `StudyError(file, "section.key", message)`, so a bad study names its file, the
key path and the bad value in one line.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from sweep.errors import StudyError

T = TypeVar("T")
_MISSING = object()
REQUIRED = _MISSING  # pass as a default to mean "this key must be present"


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


class Table:
    """One TOML table (a dict) at a key path, read field by field."""

    def __init__(self, data: Any, file: str, path: str):
        if not isinstance(data, dict):
            raise StudyError(file, path or "<top>", f"expected a table, got {_type_name(data)} {data!r}")
        self.data, self.file, self.path = data, file, path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> StudyError:
        return StudyError(self.file, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(name, "is required")
        return default

    def table(self, name: str, required: bool = False) -> "Table":
        value = self.raw(name, _MISSING if required else {})
        return Table(value, self.file, self.key(name))

    def tables(self, name: str) -> list["Table"]:
        """An array of tables (`[[name]]`); missing = empty."""
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise self.error(name, f"expected an array of tables ([[{name}]]), got {_type_name(value)}")
        return [Table(v, self.file, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def str(self, name: str, default: Any = _MISSING, choices: Iterable[str] | None = None) -> str:
        value = self.raw(name, default)
        return check_str(value, self.error, name, choices)

    def int(self, name: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None) -> int:
        return check_int(self.raw(name, default), self.error, name, lo, hi)

    def float(self, name: str, default: Any = _MISSING, lo: float | None = None,
              hi: float | None = None, lo_open: bool = False) -> float:
        return check_float(self.raw(name, default), self.error, name, lo, hi, lo_open)

    def bool(self, name: str, default: Any = _MISSING) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_type_name(value)} {value!r}")
        return value

    def list(self, name: str, item: Callable[[Any, str], T], default: Any = _MISSING,
             nonempty: bool = True) -> list[T]:
        """A list whose items `item(value, key_path_of_item)` checks; a scalar is refused."""
        value = self.raw(name, default)
        if not isinstance(value, list):
            raise self.error(name, f"expected a list, got {_type_name(value)} {value!r}")
        if nonempty and not value:
            raise self.error(name, "must not be empty")
        return [item(v, f"{name}[{i}]") for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], f"unknown key (allowed here: {', '.join(sorted(self._seen)) or 'none'})")


def check_str(value: Any, error: Callable[[str, str], StudyError], name: str,
              choices: Iterable[str] | None = None) -> str:
    if not isinstance(value, str):
        raise error(name, f"expected a string, got {_type_name(value)} {value!r}")
    if choices is not None and value not in (allowed := list(choices)):
        raise error(name, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def check_int(value: Any, error: Callable[[str, str], StudyError], name: str,
              lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(name, f"expected an integer, got {_type_name(value)} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(name, f"{value} is out of range [{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}]")
    return value


def check_float(value: Any, error: Callable[[str, str], StudyError], name: str,
                lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(name, f"expected a number, got {_type_name(value)} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise error(name, f"must be finite, got {value}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        raise error(name, f"{value:g} is out of range {left}{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}]")
    return value
