"""`vlmsweep convert FORMAT ... --out FILE.jsonl`: the command line over `models.data.convert`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sweep.errors import UserError

# format → (help, [(option, help)], optional options); every option is a path unless said
_FORMATS: dict[str, tuple[str, list[tuple[str, str]], list[tuple[str, str]]]] = {
    "vqav2": ("VQAv2 (soft accuracy)", [("--questions", "questions JSON"), ("--annotations", "annotations JSON"),
                                        ("--images", "COCO image folder")], []),
    "gqa": ("GQA (exact match)", [("--questions", "balanced questions JSON"), ("--images", "image folder")], []),
    "vizwiz": ("VizWiz (soft accuracy, unanswerable)", [("--annotations", "split annotation JSON"),
                                                         ("--images", "image folder")], []),
    "textvqa": ("TextVQA (soft accuracy)", [("--annotations", "TextVQA JSON"), ("--images", "image folder")], []),
    "pope": ("POPE, one split (acc, F1)", [("--questions", "the split's JSON lines"),
                                           ("--images", "COCO image folder")], []),
    "refcoco": ("RefCOCO/+/g (box at IoU >= 0.5)", [("--refs", "REFER refs(...).p"),
                                                    ("--instances", "instances.json"),
                                                    ("--images", "COCO image folder")],
                [("--split", "REFER split (default val)")]),
    "arc": ("ARC Easy/Challenge (acc, acc_norm)", [("--file", "ARC JSONL")], []),
    "hellaswag": ("HellaSwag (acc, acc_norm)", [("--file", "HellaSwag JSONL")], []),
    "piqa": ("PIQA (acc, acc_norm)", [("--file", "PIQA JSONL")],
             [("--labels", "labels file, one 0/1 per line (else each record's 'label')")]),
    "mc": ("any multiple-choice JSONL", [("--file", "JSONL"), ("--context", "context field"),
                                         ("--choices", "choices field (a list)"),
                                         ("--label", "label field (index or choice text)")],
           [("--chance", "chance level (default: mean of 1/number of choices)")]),
}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for fmt, (help_, required, optional) in _FORMATS.items():
        p = sub.add_parser(fmt, help=help_, description=f"Convert {help_} files on disk to eval JSONL.")
        for option, text in required:
            p.add_argument(option, required=True, help=text)
        for option, text in optional:
            p.add_argument(option, type=float if option == "--chance" else str, default=None, help=text)
        p.add_argument("--out", required=True, help="the JSONL to write (its stem is the task name)")


def run_convert(args: argparse.Namespace) -> int:
    from models.data.convert import convert
    from models.data.errors import DataError
    from models.data.files import within

    _, required, optional = _FORMATS[args.format]
    inputs = {o[2:]: getattr(args, o[2:]) for o, _ in required + optional if getattr(args, o[2:]) is not None}
    try:
        n = convert(args.format, args.out, **inputs)
    except DataError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {n} {args.format} records to {args.out}")
    images = inputs.get("images")
    if images and not within(images, str(Path(args.out).resolve().parent)):
        # Eval images are confined to the eval file's folder unless its source names their root.
        print(f'its images lie outside {Path(args.out).parent}: give its data source image_root = "{images}"')
    return 0
