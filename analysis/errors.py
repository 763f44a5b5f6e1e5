"""Exceptions and warnings of the analysis package.

`AnalysisInputError` is a `ValueError` whose message names the file and the field or column at
fault; the CLI turns it into exit code 2. `AnalysisWarning` marks input skipped during ingest.
"""

from __future__ import annotations


class AnalysisInputError(ValueError):
    """Bad input (a file, a column, a record): the message names where and what."""


class AnalysisWarning(UserWarning):
    """Something was skipped (a corrupt file, a step that could not be read); ingest went on."""
