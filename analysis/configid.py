"""A step's configuration identity (`steps.config_id`): what it computed, its seeds left out.

Two steps share a config_id exactly when their kinds, configs with every `seed` field removed,
code salts and their parents' config_ids are equal — so runs differing only by seed average into
one configuration, and an edit of any other field (a fine-tune `lr` changed mid-study) makes a
new configuration, never a second "seed" of the old one. Labels in `config_json` (a data
source's name) count too: renaming a source is rare and keeping it apart is the safe side.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

SEED_FIELD = "seed"  # the top-level field of every step config that seeds it


def config_ids(rows: Iterable[tuple[str, str, str, str, Any]]) -> dict[str, str]:
    """step_id -> config_id, from (step_id, kind, config_json, parents_json, code_salt) rows.

    A parent that is not among the rows (its directory was deleted) stands for itself by step id.
    """
    table = {sid: (kind, cfg, parents, salt) for sid, kind, cfg, parents, salt in rows}
    out: dict[str, str] = {}

    def resolve(sid: str) -> str:
        pending = [sid]
        while pending:  # depth-first without recursion: a chain may be long
            top = pending[-1]
            if top in out:
                pending.pop()
                continue
            kind, cfg, parents, salt = table[top]
            links = [(role, pid) for role, pid in json.loads(parents or "[]")]
            todo = [pid for _, pid in links if pid in table and pid not in out and pid not in pending]
            if todo:
                pending.extend(todo)
                continue
            config = json.loads(cfg or "{}")
            if isinstance(config, dict):
                config.pop(SEED_FIELD, None)
            body = {"kind": kind, "config": config, "salt": salt,
                    "parents": [[role, out.get(pid, pid)] for role, pid in links]}
            out[top] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
            pending.pop()
        return out[sid]

    for sid in table:
        resolve(sid)
    return out
