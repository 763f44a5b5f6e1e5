"""The one escaping of user-derived text (task, study, data-source names, error messages) put
into Markdown outputs (findings.md): it reads as itself and never as HTML, a link or an image.

`<`, `>` and `&` become HTML entities (an `<img onerror=…>` in an eval file's name shows as text
wherever the Markdown is rendered with HTML allowed); the characters that make Markdown syntax
inside a line (`\\`, `` ` ``, `*`, `[`, `]`, `!`, `|`) get a backslash; a line break becomes a
space, so a value never starts a block of its own.
"""

from __future__ import annotations

from typing import Any

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_SYNTAX = set("\\`*[]!|")


def md_text(value: Any) -> str:
    """`value` as Markdown text that renders as exactly its characters."""
    out = []
    for ch in " ".join(str(value).splitlines()):
        if ch in _ENTITIES:
            out.append(_ENTITIES[ch])
        elif ch in _SYNTAX:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)

