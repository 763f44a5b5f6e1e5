"""findings.md's "Training stability" section: the study's diverged steps (failed with reason
`diverged`: a non-finite loss, gradient norm or eval), and the loss spikes, skipped batches and
rewinds its training steps recorded (models.stages.guard writes them as metrics rows).
"""

from __future__ import annotations

import polars as pl

from models import stepfiles as sf

SHOWN = 8  # steps (and optimizer steps per step) listed before "and N more"


def _some(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _event_line(events: pl.DataFrame, name: str, what: str) -> list[str]:
    rows = events.filter(pl.col("name") == name)
    if rows.is_empty():
        return []
    parts = []
    for (step_id, kind), group in rows.group_by("step_id", "kind", maintain_order=True):
        at = [f"{s} (×{v:.2g})" if name == sf.SPIKE_METRIC else str(s)
              for s, v in zip(group["step"].to_list(), group["value"].to_list())]
        parts.append(f"{kind} `{step_id}` at step{'s' * (len(at) > 1)} {_some(at)}")
    return [f"- {what} in {rows['step_id'].n_unique()} step(s): {'; '.join(parts[:SHOWN])}"
            + (f"; and {len(parts) - SHOWN} more steps" if len(parts) > SHOWN else "") + "."]


def stability_markdown(events: pl.DataFrame, diverged: pl.DataFrame) -> list[str]:
    """The section's lines. `events`: analysis.queries.training_events with a `kind` column;
    `diverged`: step_id, kind, error of the study's steps that failed with reason diverged."""
    out = ["## Training stability", ""]
    if events.is_empty() and diverged.is_empty():
        return out + ["No step diverged, and no training step recorded a loss spike, a skipped batch or a "
                      "rewind.", ""]
    if not diverged.is_empty():
        out.append(f"- {len(diverged)} step(s) diverged (failed, reason `diverged`); the steps under them "
                   "are blocked and none of their numbers is a result:")
        out += [f"  - {kind} `{sid}`: {error.removeprefix('Diverged: ')[:200]}"
                for sid, kind, error in diverged.head(SHOWN).select("step_id", "kind", "error").iter_rows()]
        if len(diverged) > SHOWN:
            out.append(f"  - and {len(diverged) - SHOWN} more")
    out += _event_line(events, sf.SPIKE_METRIC, "Loss spikes (loss / running median of the steps before)")
    out += _event_line(events, sf.SKIPPED_METRIC, "Batches skipped for a non-finite loss or gradient norm")
    out += _event_line(events, sf.REWIND_METRIC, "Rewinds to the last checkpoint after a non-finite step")
    return out + [""]
