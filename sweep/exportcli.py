"""`vlmsweep export`: a step directory, or a study's cells, as Hugging Face folders.

    vlmsweep export runs/demo/steps/finetune/<id> --format hf --out hf/ft
    vlmsweep export studies/demo.toml --cells intro_fraction=0.8,1.0 seed=0 --kind branch --out hf/demo

The work is `models.hf_export`'s; this module picks the steps (the cells' steps of one kind, each
once) and turns its errors into one line and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sweep.errors import UserError

KINDS = ("trunk", "branch", "finetune")
_FRACTION_AXES = ("intro_fraction", "image_ratio", "instruction_share")
_INT_AXES = ("finetune_epochs", "seed")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", type=Path, help="a step directory (<root>/steps/<kind>/<id>) or a study file")
    p.add_argument("--format", choices=("hf",), default="hf",
                   help="hf: transformers LlamaForCausalLM + tokenizer (+ encoder and projector)")
    p.add_argument("--out", type=Path, required=True, help="the folder to create (must not exist)")
    p.add_argument("--cells", nargs="+", default=[], metavar="AXIS=V[,V]",
                   help="a study's cells to export, e.g. intro_fraction=0.8,1.0 seed=0 (default: all)")
    p.add_argument("--kind", choices=KINDS, default="finetune",
                   help="which model of each cell (default: finetune, the cell's final model)")
    p.add_argument("--root", type=Path, default=None,
                   help="results root of a study file (default: [study].root)")


def _value(axis: str, text: str) -> Any:
    from models.stepfiles import round_fraction

    try:
        if axis in _FRACTION_AXES:
            return round_fraction(float(text))
        return int(text) if axis in _INT_AXES else text
    except ValueError:
        raise UserError(f"--cells {axis}={text}: not a value of {axis}") from None


def parse_cells(items: list[str], axes: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """`AXIS=V[,V]` items → axis → the values asked for (each must be on the study's axis)."""
    chosen: dict[str, tuple[Any, ...]] = {}
    for item in items:
        axis, sep, values = item.partition("=")
        if not sep or axis not in axes:
            raise UserError(f"--cells {item}: expected AXIS=V[,V] with AXIS one of {', '.join(axes)}")
        picked = tuple(_value(axis, v) for v in values.split(","))
        missing = [v for v in picked if v not in axes[axis]]
        if missing:
            raise UserError(f"--cells {item}: {missing[0]!r} is not on the study's {axis} axis "
                            f"({', '.join(map(str, axes[axis]))})")
        chosen[axis] = picked
    return chosen


def run_export(args: argparse.Namespace) -> int:
    from models.hf_export import ExportError, export_step, export_steps, step_location

    try:
        if args.target.is_dir():
            if args.cells:
                raise UserError("--cells picks cells of a study file, not of one step directory")
            root, kind, step_id = step_location(args.target)
            export_step(root, kind, step_id, args.out)
            print(f"exported {kind} {step_id} to {args.out.resolve()}")
            return 0
        steps, root = _study_steps(args)
        export_steps(root, steps, args.out)
    except (ExportError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(f"exported {len(steps)} {args.kind} step(s) to {args.out.resolve()} (index.json lists them)")
    return 0


def _study_steps(args: argparse.Namespace) -> tuple[list[tuple[str, str, list[dict[str, Any]]]], Path]:
    from sweep.plan import plan_study
    from sweep.spec import load_study

    if not args.target.is_file():
        raise UserError(f"{args.target}: neither a step directory nor a study file")
    study = load_study(args.target)
    plan = plan_study(study, args.root)
    chosen = parse_cells(args.cells, study.axes)
    by_step: dict[str, list[dict[str, Any]]] = {}
    for cell, ids in plan.cells.items():
        if all(getattr(cell, axis) in values for axis, values in chosen.items()):
            by_step.setdefault(ids[args.kind], []).append(cell.as_dict())
    if not by_step:
        raise UserError(f"--cells {' '.join(args.cells)}: matches no cell of {args.target}")
    return [(args.kind, step_id, cells) for step_id, cells in by_step.items()], plan.root
