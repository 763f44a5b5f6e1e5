"""`vlmsweep app STUDY|RESULTS_DIR [--port P] [--host H]`: serve the result browser with Streamlit.

Resolves the results root (a study file's `root`, or a folder holding results.duckdb), checks the
catalog opens, prints the URL and replaces this process with `streamlit run app/main.py -- ROOT`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MAIN_SCRIPT = Path(__file__).resolve().parent / "main.py"


def resolve_root(target: Path) -> Path:
    """The results root a study file or a results folder names; UserError when there is no catalog."""
    from analysis.errors import AnalysisInputError
    from analysis.store import catalog_path, connect
    from sweep.errors import UserError

    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such study file or results folder")
    if target.is_file():
        from sweep.spec import load_study  # the one use of sweep here: a study's results root

        root = load_study(target).root
        hint = f"vlmsweep ingest {target}"
    else:
        root = target
        hint = "vlmsweep ingest STUDY (the study file whose results are here)"
    if not catalog_path(root).is_file():
        raise UserError(f"{catalog_path(root)}: no results catalog yet; run `{hint}` first")
    try:
        connect(root, read_only=True).close()  # fail here, not in the browser, on an old schema
    except AnalysisInputError as exc:
        raise UserError(str(exc)) from exc
    return root.resolve()


def streamlit_command(root: Path, *, port: int, host: str) -> list[str]:
    """The `streamlit run` command line serving root read-only, headless, with no usage stats and the
    viewer's toolbar (no "Deploy", rerun or clear-cache: this is a local results browser)."""
    if not 0 < port < 65536:
        from sweep.errors import UserError

        raise UserError(f"--port {port}: must be between 1 and 65535")
    return [sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--client.toolbarMode", "viewer", "--", str(root)]


def run_app(args) -> int:
    """CLI handler: args.target (Path), args.port (int), args.host (str). Does not return on success."""
    root = resolve_root(args.target)
    command = streamlit_command(root, port=args.port, host=args.host)
    host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
    print(f"vlmsweep app: serving {root / 'results.duckdb'} read-only at http://{host}:{args.port}", flush=True)
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process
