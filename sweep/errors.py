"""Errors the command line turns into one clear message and exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a study file, a path, an option): message, exit 2, nothing written."""


class StudyError(UserError, ValueError):
    """A study file is invalid; the message names the file, the key path and the bad value."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key = file, key
        super().__init__(f"{file}: {key}: {message}")
