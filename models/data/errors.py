"""Errors the data layer raises for bad input: each names the shard (file) and record index.

All are `ValueError` subclasses so the CLI can turn them into one clear message and exit 2;
`BadRecordError` is the one a study may opt to skip (`on_bad_record = "skip"`).
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data or a bad data-source description."""


class BadRecordError(DataError):
    """One record (or a whole shard) could not be read; `on_bad_record="skip"` skips these."""

    def __init__(self, shard: str, index: int, reason: str) -> None:
        self.shard, self.index, self.reason = str(shard), index, reason
        where = f"record {index}" if index >= 0 else "the shard"
        super().__init__(f"{shard}: {where}: {reason}")


class EmptySourceError(DataError):
    """A source whose shards hold no readable record at all (an infinite stream would hang)."""


ON_BAD_RECORD = ("error", "skip")


def check_on_bad_record(value: str) -> str:
    if value not in ON_BAD_RECORD:
        raise DataError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {value!r}")
    return value
