"""The `vlmsweep` command line: one entry point, one subcommand per job.

Each subcommand parses its arguments here and calls into a library module; bad input (a
`UserError` from anywhere below) becomes one message on stderr and exit status 2, with nothing
written. Subcommands whose implementation has not landed yet say so and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from models.stepfiles import disk_error
from sweep.errors import DEBUG_ENV, UserError
from sweep.gpuhours import GPUS

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process that SIGPIPE ended (128 + 13)

DESCRIPTION = """\
vlmsweep: scaling studies of when, and how much, image data to put into LM pre-training.

A study file (TOML) names the axes — scale × text_data × image_data × intro_fraction ×
image_ratio × instruction_share × finetune_epochs × seed × schedule — and vlmsweep expands it
into a DAG of steps (encoder, trunk, branch, finetune, eval) that share one text-only trunk per
scale, runs them inline, on local workers or on SLURM, and collects the results in DuckDB.
"""


def _study_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", type=Path, help="the study file (TOML), e.g. studies/demo.toml")
    p.add_argument("--root", type=Path, default=None,
                   help="results root (default: [study].root, relative to the study file)")


def _study_or_results_arg(p: argparse.ArgumentParser, name: bool = True) -> None:
    p.add_argument("study", type=Path,
                   help="the study file (TOML), or a results folder (e.g. ./vlmsweep-demo)")
    p.add_argument("--root", type=Path, default=None,
                   help="results root of a study file (default: [study].root, relative to the study file)")
    if name:
        p.add_argument("--name", default=None, help="a results folder's study (default: its only one)")


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="show the steps a study expands to, their cost and status",
                       description="Expand a study into its DAG of steps and show, per kind and "
                       "scale, how many steps there are, their tokens and FLOPs, how many are "
                       "done under the root, and the tokens saved by sharing trunks.")
    _study_arg(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: study, totals, savings and a `steps` list")
    p.add_argument("--explain", action="store_true",
                   help="say why each step that is not done must run")
    p.add_argument("--gpu", choices=GPUS, default="h100",
                   help="the card GPU-hours are priced on, at the MFU measured there (default h100)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs the cluster gives the study at once, for the makespan (default: no limit)")
    p.add_argument("--no-data-check", action="store_true",
                   help="plan without opening the data (a study for a cluster whose data this "
                   "machine does not have); by default every path, glob, tokenizer and eval file "
                   "is checked and a problem is an error")
    p.set_defaults(handler="sweep.plancli:run_plan")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run every step of a study that is not done",
                       description="Run the study's missing steps in dependency order. inline: "
                       "in this process; local: N worker processes; slurm: job arrays per DAG "
                       "level with afterany dependencies and a parent check in each task (submits "
                       "and returns).")
    _study_arg(p)
    p.add_argument("--backend", choices=("inline", "local", "slurm"), default=None,
                   help="where steps run (default: [backend].default of the study)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: the study's [backend].workers, else one per GPU group)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also rerun failed steps (each at most [backend].max_failures times)")
    p.add_argument("--dry-run", action="store_true", help="print what would run; run nothing")
    p.set_defaults(handler="sweep.launch.cli:run_run")


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="each step as done / running / pending / failed / blocked",
                       description="Reconcile the study's steps from result files and one "
                       "squeue/sacct query per poll; failed steps show their reason and log path.")
    _study_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true", help="refresh until every step is settled")
    p.set_defaults(handler="sweep.launch.cli:run_status")


def _add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="collect finished steps into <root>/results.duckdb",
                       description="Build the DuckDB catalog from every finished step's files: "
                       "idempotent, incremental, and swapped in atomically.")
    _study_or_results_arg(p, name=False)
    _skip_unreadable_arg(p)
    p.set_defaults(handler="sweep.analysiscli:run_ingest")


def _skip_unreadable_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-unreadable", action="store_true",
                   help="ingest the rest when a step file cannot be read (without it: an error "
                   "naming the file, and the previous catalog stays); such a step keeps the rows "
                   "the previous catalog had for it")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write the paper's figures, tables and findings",
                       description="Write every figure the results support (the CSV of the plotted "
                       "data and interactive HTML; PNG, SVG and PDF where a Chrome/Chromium is found), "
                       "LaTeX tables and findings.md.")
    _study_or_results_arg(p)
    from analysis.cli import add_report_arguments  # adds --out, --average-tasks, --bootstrap, --seed

    add_report_arguments(p)
    _skip_unreadable_arg(p)
    p.set_defaults(handler="sweep.analysiscli:run_report")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict the best f and ratio at a scale not trained, with a backtest",
                       description="Fit cross-scale models of the VL and text scores and held-out losses "
                       "over (N, D, intro_fraction, image_ratio), predict the best intro_fraction and "
                       "image_ratio at a larger scale with bootstrap intervals, and backtest the method "
                       "on the largest trained scale. Needs at least 3 trained scales.")
    _study_or_results_arg(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--scale", help="a preset name to predict (e.g. 1.4b)")
    target.add_argument("--params", type=float, help="LM parameters N to predict at")
    p.add_argument("--tokens", type=float, default=None,
                   help="trunk tokens D at the target (default: the study's tokens per parameter × N)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print the prediction and backtest as JSON")
    p.set_defaults(handler="sweep.analysiscli:run_predict")


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="browse results in a Streamlit app (read-only)")
    p.add_argument("target", type=Path, help="a study file or a results folder")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    p.set_defaults(handler="app.cli:run_app")


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="adaptive multi-objective search over intro_fraction and image_ratio")
    _study_arg(p)
    p.add_argument("--trials", type=int, required=True, help="Optuna trials to run in total")
    p.add_argument("--objectives", default="vl,text",
                   help="comma-separated stable-score averages to maximise (vl, text)")
    p.add_argument("--backend", choices=("local", "slurm"), default="local",
                   help="where trial steps run, as with `run` (local worker processes or SLURM jobs)")
    p.add_argument("--workers", type=int, default=None, help="trials running at once")
    p.add_argument("--sampler", choices=("tpe", "nsga2"), default="tpe")
    p.add_argument("--lattice", type=float, default=0.05,
                   help="intro fractions are multiples of this; the trunk checkpoints each")
    p.add_argument("--ratio-range", default="0.01,0.5", help="image_ratio search range lo,hi (log scale)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--compare-grid", action="store_true",
                   help="report the hypervolume of the found front vs the grid's")
    p.add_argument("--json", action="store_true", help="print trials and pareto_front as JSON")
    p.set_defaults(handler="sweep.search:run_search")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the demo study end to end on this machine's CPU",
                       description="Plan studies/demo.toml, run it on local workers, ingest, "
                       "write the report and print the findings.")
    p.add_argument("--out", type=Path, default=None,
                   help="results root (default ./vlmsweep-demo, or ./vlmsweep-demo-seed-offset-K with "
                   "--seed-offset K; `vlmsweep app DIR` opens it)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: the study's [backend].workers, else one per GPU group)")
    p.add_argument("--study", type=Path, default=None,
                   help="run another study the demo way (default: studies/demo.toml)")
    p.add_argument("--seed-offset", type=int, default=0, metavar="K",
                   help="replicate: move every training seed (the seed axis, the shared trunk's and the "
                   "encoder's) by K, so the findings can be checked against an independent run")
    p.set_defaults(handler="sweep.demo:run_demo")


def _add_world(sub) -> None:
    p = sub.add_parser("world", help="write the built-in world as real-format shards",
                       description="Materialise the procedurally generated world as JSONL/Parquet "
                       "text shards, WebDataset image-caption shards, LLaVA JSON and eval JSONL, "
                       "with a manifest of counts and sha256 per shard.")
    from models.data.materialize import add_world_arguments  # numpy only; no torch

    add_world_arguments(p)
    p.set_defaults(handler="models.data.materialize:run_world")


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="turn a benchmark's published files into eval JSONL",
                       description="Convert benchmark files already on disk (nothing is downloaded) "
                                   "into the vqa_jsonl / mc_jsonl records eval sources read, with the "
                                   "metric and chance each benchmark implies.")
    from sweep.convertcli import add_convert_arguments  # argparse only

    add_convert_arguments(p)
    p.set_defaults(handler="sweep.convertcli:run_convert")


def _add_rehearse(sub) -> None:
    p = sub.add_parser("rehearse", help="run a study's whole DAG on tiny files and models, on this CPU",
                       description="Write a few records of each data source in the layout it is "
                       "published in, shrink every scale to a tiny model with its recipe, run every "
                       "step inline, then ingest, report and predict: the check to run before a "
                       "study spends GPU-days (docs/rehearsal.md).")
    _study_arg_only(p)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the files and results (default ./vlmsweep-rehearse-<study>)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps of the smallest trunk and image stage")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    p.add_argument("--records", type=int, default=8, help="records per data file")
    p.add_argument("--max-cells", type=int, default=0,
                   help="run a subset of at most N cells that still holds every axis value (0: all)")
    p.set_defaults(handler="sweep.rehearse:run_rehearse")


def _study_arg_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", type=Path, help="the study file (TOML), e.g. studies/paper.toml")


def _add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="pre-tokenise a study's text source into token arrays",
                       description="Tokenise a jsonl/parquet text source once into memory-mapped "
                       "token shards and a manifest; a study names the folder as a source of kind "
                       "'tokens' (same step ids as the text while the tokens are identical).")
    from sweep.tokenizecli import add_tokenize_arguments  # argparse only

    add_tokenize_arguments(p)
    p.set_defaults(handler="sweep.tokenizecli:run_tokenize")


def _add_fit_scaling(sub) -> None:
    from analysis.cli import add_fit_scaling_arguments  # argparse only; no heavy imports

    p = sub.add_parser("fit-scaling", help="fit a Chinchilla Approach-3 law to a CSV",
                       description="Fit L(N, D) = E + A/N^alpha + B/D^beta (Huber loss on log-loss, "
                       "L-BFGS from a grid of starts) to the rows of a CSV file.")
    add_fit_scaling_arguments(p)
    p.set_defaults(handler="sweep.analysiscli:run_fit_scaling")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export trained models as Hugging Face folders",
                       description="Write a step's language model as a transformers LlamaForCausalLM "
                       "folder with its tokenizer, and a VLM's encoder and projector beside it; or "
                       "every matching cell's model of a study, one folder per step, with an index.")
    from sweep.exportcli import add_export_arguments  # argparse only

    add_export_arguments(p)
    p.set_defaults(handler="sweep.exportcli:run_export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmsweep", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_plan, _add_run, _add_status, _add_ingest, _add_report, _add_predict, _add_app,
                _add_search, _add_demo, _add_world, _add_convert, _add_rehearse, _add_tokenize,
                _add_fit_scaling, _add_export):
        add(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="print the traceback of a failure (bad input included), here and "
                             "in every step's log, instead of one line")
    return parser


def _resolve(spec: str) -> Callable | None:
    """"module:function" → the function, or None while that module has not landed."""
    module, _, name = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise
    return getattr(mod, name, None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _resolve(args.handler)
    if handler is None:
        print(f"vlmsweep {args.command}: not implemented yet", file=sys.stderr)
        return EXIT_USAGE
    before = os.environ.get(DEBUG_ENV)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # inherited by workers and SLURM jobs
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"vlmsweep {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vlmsweep {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`vlmsweep status ... | head`): stop quietly, as `cat` would, and
        # point stdout at /dev/null so that the interpreter's last flush raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        if not disk_error(exc) or args.debug:
            raise
        # A full disk or an unwritable root: the file and why, not a traceback.
        print(f"vlmsweep {args.command}: error: {exc.filename or 'the results root'}: cannot write "
              f"({exc.strerror or exc})", file=sys.stderr)
        return EXIT_USAGE
    finally:  # called in-process (tests, notebooks), --debug must not outlive its command
        if args.debug and before is None:
            os.environ.pop(DEBUG_ENV, None)
        elif args.debug:
            os.environ[DEBUG_ENV] = before


if __name__ == "__main__":
    sys.exit(main())
