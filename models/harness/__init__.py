"""Text evals through EleutherAI's lm-evaluation-harness (the optional `lmeval` extra).

`harness.run` turns the eval step's text multiple-choice tasks into lm-eval tasks over local JSONL
files and scores them with `harness.lm.VLMSweepLM`. Only `harness.lm` imports lm_eval at import
time (the rest imports it when used), so the project runs without the extra and names it when a
study asks for it.
"""

from __future__ import annotations

import importlib.util

EXTRA = "lmeval"  # the pyproject extra that installs lm-evaluation-harness
OWN, LM_EVAL = "vlmsweep", "lm-eval"  # who scores text tasks: the project's scorer, or lm-eval
HARNESSES = (OWN, LM_EVAL)


def lm_eval_missing() -> str | None:
    """A one-line reason when lm-evaluation-harness cannot be imported, else None."""
    if importlib.util.find_spec("lm_eval") is None:
        return f"text_harness = '{LM_EVAL}' needs lm-evaluation-harness: pip install 'vlmsweep[{EXTRA}]'"
    return None


def require_lm_eval() -> None:
    from models.data.errors import DataError

    reason = lm_eval_missing()
    if reason:
        raise DataError(reason)
