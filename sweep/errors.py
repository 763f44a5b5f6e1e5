"""Errors the command line turns into one clear message and exit status 2."""

from __future__ import annotations

import os

# Set by `vlmsweep --debug` for this process and every job it starts (workers and SLURM jobs
# inherit the environment): a step's bad-input failure prints its traceback, not one line.
DEBUG_ENV = "VLMSWEEP_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class UserError(Exception):
    """Bad input from the user (a study file, a path, an option): message, exit 2, nothing written."""


class StudyError(UserError, ValueError):
    """A study file is invalid; the message names the file, the key path and the bad value."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key = file, key
        super().__init__(f"{file}: {key}: {message}")
