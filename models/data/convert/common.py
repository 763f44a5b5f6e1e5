"""What every converter shares: reading the published files, naming a bad record, writing the JSONL.

A converter builds every record in memory first and writes the output last (temp name + rename),
so a malformed input file leaves nothing behind; the error names the file and the record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from models.data.errors import DataError


class ConvertError(DataError):
    """A published file that does not match its format: names the file and the record."""

    def __init__(self, path: str | Path, where: str, reason: str) -> None:
        super().__init__(f"{path}: {where}: {reason}")


def read_json(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ConvertError(path, "<file>", f"cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ConvertError(path, "<file>", f"not valid JSON ({exc})") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number from 1, object) for every non-blank line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as exc:
        raise ConvertError(path, "<file>", f"cannot read ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise ConvertError(path, f"line {number}", f"not valid JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise ConvertError(path, f"line {number}", f"expected a JSON object, got {type(rec).__name__}")
        yield number, rec


def need(rec: Any, key: str, path, where: str, types: type | tuple[type, ...] = str) -> Any:
    """rec[key] of the given type(s), or a ConvertError naming the record and the field."""
    value = rec.get(key) if isinstance(rec, dict) else None
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise ConvertError(path, where, f"field {key!r} is {got}")
    return value


def dig(rec: Any, dotted: str, path, where: str, types: type | tuple[type, ...] = str) -> Any:
    """A field by dotted path ("question.stem")."""
    *parents, last = dotted.split(".")
    for key in parents:
        rec = need(rec, key, path, where, dict)
    return need(rec, last, path, where, types)


def image_ref(images: str | Path, name: str, out: str | Path, path, where: str) -> str:
    """An image of the published folder as a path relative to the output file (refused if absent)."""
    image = Path(images) / name
    if not image.is_file():
        raise ConvertError(path, where, f"image {str(image)!r} does not exist")
    return os.path.relpath(image.resolve(), Path(out).resolve().parent)


def uniform_chance(records: list[dict]) -> float:
    """The mean of 1 / number of choices: a blind guess's expected accuracy."""
    return sum(1.0 / len(r["choices"]) for r in records) / len(records)


def write_jsonl(records: Iterable[dict], out: str | Path) -> int:
    """Write the records as JSONL (temp name, then rename); returns how many."""
    records = list(records)
    if not records:
        raise DataError(f"{out}: nothing to write: the input holds no records")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(records)
