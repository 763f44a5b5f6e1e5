"""`vlmsweep rehearse STUDY`: the study's whole DAG on tiny files, with tiny models, on this CPU.

The check a lab runs before it spends GPU-days: the study file is read as it is, each of its data
sources is written as a few records in the layout it is published in (`sweep.rehearse_files`),
every scale becomes a tiny model that keeps its preset's recipe, and every step kind the study
names trains and evaluates inline; then ingest, report and predict run over the results.

Kept exactly: every axis value, every include/exclude rule (the cells), every source with its
kind and options, the eval files' task names, [train] rules (trunk_seed, instruction data, loss on
image positions, on_bad_record, per-scale LR), [eval] settings, the vision kind (an `hf` encoder
becomes a random-weight SigLIP saved with transformers), each preset's norm, QK-norm, z-loss, LR
and cosine floor. Shrunk: widths, depths and vocabulary (the i-th smallest scale gets d_model
TINY_WIDTHS[i], 2 layers, the world's 512-row vocabulary, so scales keep their order), batch and
sequence length, token budgets (the smallest trunk and image stage take `steps` optimizer steps,
larger scales proportionally more), fine-tune samples, image size (16 px), the backend (inline).
`--max-cells N` runs a subset for speed (`cover_cells`): every scale, data source and step kind
always, then as many axis values as N allows.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from models.presets import PRESETS, WORLD_VOCAB, Preset
from sweep.backendsettings import BackendSettings
from sweep.errors import UserError
from sweep.rehearse_files import PUBLISHED, Layout, write_sources, write_tiny_siglip
from sweep.spec import AXES, Cell, ModelOverride, Study, load_study

TINY_WIDTHS = (16, 24, 32, 40, 48, 56, 64, 80)  # d_model of the smallest, second smallest … scale
TINY_VISION = {"image_size": 16, "patch_size": 8, "width": 16, "n_layers": 1, "n_heads": 2, "mlp_dim": 0}
_SHAPE_OVERRIDES = ("batch_size", "seq_len", "image_seq_len", "warmup_steps")  # undone by shrinking


@dataclass(frozen=True, kw_only=True, slots=True)
class Shrink:
    """How far the rehearsal shrinks the study (see the module docstring)."""

    steps: int = 3  # optimizer steps of the smallest scale's trunk and of its image stage
    batch_size: int = 2  # sequences (and fine-tune conversations) per step
    seq_len: int = 32  # tokens per sequence, text and image stage
    records: int = 8  # records per data file
    max_cells: int = 0  # 0 = every cell; else a subset holding every axis value

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "records"):
            if getattr(self, name) < 1:
                raise UserError(f"rehearse: --{name.replace('_', '-')} must be >= 1")
        if self.max_cells < 0:
            raise UserError("rehearse: --max-cells must be >= 0")


def tiny_presets(scales: tuple[str, ...], shrink: Shrink) -> dict[str, Preset]:
    """Each scale as a tiny model with its preset's recipe, in the presets' size order."""
    order = sorted(set(scales), key=lambda s: (PRESETS[s].params["lm_total"] or 0, s))
    out = {}
    for i, name in enumerate(order):
        real = PRESETS[name]
        d = TINY_WIDTHS[i] if i < len(TINY_WIDTHS) else 16 * (i + 1)
        lm = replace(real.model.lm, vocab_size=WORLD_VOCAB, d_model=d, n_layers=2, n_heads=2,
                     ffn_hidden=2 * d, max_seq_len=max(64, 2 * shrink.seq_len))
        vision = replace(real.model.vision, **TINY_VISION)
        projector = replace(real.model.projector, hidden=0, pixel_shuffle=min(real.model.projector.pixel_shuffle, 2))
        train = replace(real.train, batch_size=shrink.batch_size, seq_len=shrink.seq_len,
                        image_seq_len=shrink.seq_len, warmup_steps=1)
        out[name] = replace(real, model=replace(real.model, lm=lm, vision=vision, projector=projector),
                            train=train, description=f"rehearsal stand-in for {name}")
    return out


@contextlib.contextmanager
def presets_replaced(tiny: dict[str, Preset]) -> Iterator[None]:
    """The registry with the study's scales as their tiny stand-ins, for this process only (the
    rehearsal plans and runs inline), restored afterwards even on error."""
    saved = {name: PRESETS[name] for name in tiny}
    PRESETS.update(tiny)
    try:
        yield
    finally:
        PRESETS.update(saved)


def _features(cell: Cell, essential: bool) -> set[tuple[str, object]]:
    """What a cell exercises: essential = its scale, its data sources and whether its image stage
    mixes instruction data; else every (axis, value) it holds."""
    if essential:
        return {("scale", cell.scale), ("text_data", cell.text_data), ("image_data", cell.image_data),
                ("instruction_data", cell.instruction_share > 0)}
    return {(a, getattr(cell, a)) for a in AXES}


def cover_cells(cells: tuple[Cell, ...], limit: int) -> list[Cell]:
    """At most `limit` cells (0: all), in grid order: first a greedy cover of every scale, data
    source and instruction-data use (never cut, so every step kind and source kind runs), then
    cells adding axis values not yet held, then the rest of the grid."""
    if limit == 0:
        return list(cells)
    chosen: list[Cell] = []
    for essential in (True, False):
        missing = set().union(*(_features(c, essential) for c in cells)) - set().union(
            set(), *(_features(c, essential) for c in chosen))
        while missing and (essential or len(chosen) < limit):
            best = max(cells, key=lambda c: (len(missing & _features(c, True)),
                                             len(missing & _features(c, False))))
            chosen.append(best)
            missing -= _features(best, essential)
    chosen += [c for c in cells if c not in chosen][:max(0, limit - len(chosen))]
    return [c for c in cells if c in chosen]  # grid order


def _vision(study: Study, folder: Path) -> ModelOverride | None:
    if study.vision is None:
        return None
    values = [(k, TINY_VISION.get(k, v)) for k, v in study.vision.values]
    if dict(values).get("kind") == "hf":
        values = [(k, str(write_tiny_siglip(folder / "siglip")) if k == "hf_path" else v) for k, v in values]
    return replace(study.vision, values=tuple(values))


def rehearsal_study(study: Study, folder: Path, shrink: Shrink, layout: Layout,
                    tiny: dict[str, Preset]) -> Study:
    """The study over tiny files under `folder`, with tiny budgets (cells unchanged)."""
    sources = write_sources(study.data, folder / "data", records=shrink.records, layout=layout)
    smallest = min(p.params["lm_total"] or 1 for p in tiny.values())
    per_param = shrink.steps * shrink.batch_size * shrink.seq_len / smallest
    train = replace(
        study.train, trunk_tokens_per_param=per_param, image_tokens_per_param=per_param,
        overrides=tuple(kv for kv in study.train.overrides if kv[0] not in _SHAPE_OVERRIDES),
        per_scale=tuple((s, tuple(kv for kv in kvs if kv[0] not in _SHAPE_OVERRIDES))
                        for s, kvs in study.train.per_scale))
    projector = study.projector and replace(study.projector, values=tuple(
        (k, 0 if k == "hidden" else min(v, 2) if k == "pixel_shuffle" else v) for k, v in study.projector.values))
    return replace(study, name=f"{study.name}-rehearsal", root=folder / "results", data=sources,
                   vision=_vision(study, folder), projector=projector, train=train,
                   encoder=replace(study.encoder, samples=shrink.steps * shrink.batch_size,
                                   batch_size=shrink.batch_size),
                   finetune=replace(study.finetune, samples=2 * shrink.batch_size, batch_size=shrink.batch_size),
                   backend=BackendSettings(default="inline"))


def rehearse(study_path: str | Path, out: str | Path, *, shrink: Shrink = Shrink(),
             layout: Layout = PUBLISHED, log: Callable[[str], None] = print) -> dict:
    """Write the files, run the study's DAG inline, then ingest, report and predict; a summary."""
    from sweep.datacheck import check_plan
    from sweep.launch import get_backend, select_steps
    from sweep.plan import plan_cells, write_study_manifest

    began, out = time.monotonic(), Path(out).resolve()
    _quiet_transformers()
    study = load_study(study_path)
    tiny = tiny_presets(study.axes["scale"] + tuple(c.scale for c in study.cells), shrink)
    with presets_replaced(tiny):
        small = rehearsal_study(study, out, shrink, layout, tiny)
        cells = cover_cells(small.cells, shrink.max_cells)
        plan = plan_cells(small, cells, small.root)
        log(f"rehearse: {len(cells)} of {len(small.cells)} cells, {len(plan.steps)} steps "
            f"({_count(s.kind for s in plan.steps)}); files under {out / 'data'}")
        check_plan(plan)  # the data check `plan` runs: every path, tokenizer and eval file
        write_study_manifest(plan)
        todo = select_steps(plan, retry_failed=True, max_failures=small.backend.max_failures)
        result = get_backend("inline").run(plan, todo, workers=1, progress=False)
        if result.failed or result.blocked:
            raise UserError(f"rehearse: {result.failed} step(s) failed, {result.blocked} blocked: "
                            + "; ".join(_failures(plan)))
        summary = {"cells": len(cells), "grid_cells": len(small.cells), "steps": len(plan.steps),
                   "step_kinds": _count(s.kind for s in plan.steps),
                   "source_kinds": sorted({src.kind for src in _sources_read(plan)}),
                   "root": str(small.root)}
        summary |= _analyse(small, tiny, out, log)
    summary["seconds"] = round(time.monotonic() - began, 1)
    log(f"rehearse: every step done in {summary['seconds']} s: {summary['step_kinds']}; "
        f"source kinds read: {', '.join(summary['source_kinds'])}")
    return summary


def _analyse(study: Study, tiny: dict[str, Preset], out: Path, log: Callable[[str], None]) -> dict:
    """ingest, report and predict as a user runs them (predict may lack scales: its one line)."""
    from sweep.cli import main

    root = str(study.root)
    codes = {"ingest": main(["ingest", root]),
             "report": main(["report", root, "--name", study.name, "--out", str(out / "report"),
                             "--bootstrap", "20"])}
    largest = max(p.params["lm_total"] or 0 for p in tiny.values())
    codes["predict"] = main(["predict", root, "--name", study.name, "--params", str(4 * largest),
                             "--bootstrap", "20"])
    for command in ("ingest", "report"):
        if codes[command] != 0:
            raise UserError(f"rehearse: `vlmsweep {command}` exited {codes[command]} (see above)")
    log(f"rehearse: ingest and report ran; predict exited {codes['predict']}")
    return {"exit_codes": codes}


def _quiet_transformers() -> None:
    """No weight-loading progress bar per step (the hf encoder loads in every step)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _count(kinds) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return counts


def _sources_read(plan) -> list:
    from sweep.datacheck import reads

    return [source for source, *_ in reads(plan.steps)]


def _failures(plan) -> list[str]:
    from models import stepfiles as sf

    lines = []
    for step in plan.steps:
        failure = sf.paths_of(plan.root, step).dir / sf.FAILURE
        if failure.exists():
            lines.append(f"{step.kind} {step.step_id}: {failure.read_text().strip()[:400]}")
    return lines


def run_rehearse(args) -> int:
    shrink = Shrink(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                    records=args.records, max_cells=args.max_cells)
    out = args.out or Path(f"vlmsweep-rehearse-{Path(args.study).stem}")
    rehearse(args.study, out, shrink=shrink)
    return 0
