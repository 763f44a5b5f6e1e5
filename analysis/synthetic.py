"""A seeded generator of realistic synthetic study results, in exactly the per-step file layout.

Tests, benchmarks and the app use it to get a study without training anything: a few scales,
intro fractions 0..1, image ratios, seeds and fine-tune epochs, with scores shaped like the
paper's (VL best near f = 0.8 at large scale, small models prefer more image data) plus noise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import LOSS_METRIC
from analysis.synthetic_law import KnownLaw
from models import stepfiles as sf

# Approximate LM totals of the paper's presets (analysis never imports models).
SCALE_PARAMS = {"79m": 79_000_000, "154m": 154_000_000, "411m": 411_000_000,
                "1.4b": 1_400_000_000, "1m": 1_000_000, "5m": 5_000_000,
                "170k": 170_000, "debug": 46_000}
VL_TASKS = {"vqav2": 0.0, "gqa": 0.0, "vizwiz": 0.0, "textvqa": 0.0, "pope": 0.5}
TEXT_TASKS = {"arc_easy": 0.25, "hellaswag": 0.25, "piqa": 0.5}
METRICS_SCHEMA = pa.schema([("step", pa.int64()), ("tokens", pa.int64()), ("name", pa.string()),
                            ("value", pa.float64())])


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticSpec:
    """What to generate; the defaults give ~100 steps that exercise every figure."""

    study: str = "synthetic"
    scales: tuple[str, ...] = ("79m", "411m")
    intro_fractions: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    image_ratios: tuple[float, ...] = (0.1, 0.5)
    instruction_shares: tuple[float, ...] = (0.0,)
    finetune_epochs: tuple[int, ...] = (1, 2)
    seeds: tuple[int, ...] = (0, 1)
    schedule: str = "paper"  # paper: rewarm at f = 0 and f = 1, continue in between
    metric_rows: int = 40  # optimizer steps logged per training step (x 5 metric names)
    unfinished: int = 0  # eval steps left with progress.json only
    failed: int = 0  # eval steps left with failure.json
    seed: int = 0  # the noise seed
    # Explicit (intro_fraction, image_ratio, seed) cells instead of the full product of the three
    # axes above (instruction shares and fine-tune epochs are still crossed); sparse grids such as
    # the demo study's (a second seed only at some fractions) need it.
    cells: tuple[tuple[float, float, int], ...] | None = None
    # Cells of particular scales, replacing `cells` (or the product) there: the demo study sweeps
    # image ratios, epochs and a second seed at 1m only.
    scale_cells: tuple[tuple[str, tuple[tuple[float, float, int], ...]], ...] = ()
    # Evaluations of the text-only trunk: "final" (the trained trunk, checkpoint null), "checkpoints"
    # (one per intro fraction at checkpoint = f, as `vlmsweep run` writes them) or "none".
    trunk_evals: str = "final"
    pretrained_evals: bool = False  # also evaluate each branch before fine-tuning (stage "branch")
    failed_branches: int = 0  # the last N branches fail; their finetune and evals are planned only
    # Draw the final models' scores from this law instead of the paper-like shapes (held-out losses
    # always come from a KnownLaw: this one, or the default).
    law: KnownLaw | None = None

    def __post_init__(self) -> None:
        if self.trunk_evals not in ("final", "checkpoints", "none"):
            raise ValueError(f"SyntheticSpec.trunk_evals: {self.trunk_evals!r} is not final, checkpoints or none")

    def grid(self, scale: str | None = None) -> list[tuple[float, float, int]]:
        """The (intro_fraction, image_ratio, seed) cells to write (at `scale`), in writing order."""
        if scale in dict(self.scale_cells):
            return list(dict(self.scale_cells)[scale])
        if self.cells is not None:
            return list(self.cells)
        return [(f, r, s) for s in self.seeds for f in self.intro_fractions for r in self.image_ratios]


@dataclass(frozen=True, kw_only=True, slots=True)
class SyntheticStudy:
    root: Path
    manifest: Path
    step_ids: dict[str, list[str]] = field(default_factory=dict)  # kind -> ids written


def _sid(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _write_json(path: Path, value: dict) -> None:
    sf.write_json(path, value, indent=1, durable=False)  # test data: no fsync per file


def _write_parquet(path: Path, table: pa.Table) -> None:
    with sf.atomic_path(path, durable=False) as tmp:
        pq.write_table(table, tmp)


def lr_curve(frac: np.ndarray, *, peak: float, warmup: float = 0.02, floor: float = 0.1) -> np.ndarray:
    """Warmup + cosine to floor·peak over a schedule whose progress is `frac` in [0, 1]."""
    cos = floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * np.clip((frac - warmup) / (1 - warmup), 0, 1)))
    return peak * np.where(frac < warmup, frac / warmup, cos)


def vl_shape(scale_size: float, f: float, ratio: float, share: float, epochs: int) -> float:
    """Stable VL score: grows with scale, peaks near f = 0.8 (larger models), ratio optimum shrinks."""
    best_ratio = 0.5 / (1 + 4 * max(scale_size, 0.0))  # small models prefer more image data
    best_f = 0.55 + 0.25 * scale_size
    s = 0.25 + 0.15 * scale_size - 0.12 * (f - best_f) ** 2 - 0.04 * math.log(ratio / best_ratio) ** 2
    return s - 0.15 * share + 0.02 * min(epochs, 3) - 0.01 * max(epochs - 3, 0)


def text_shape(scale_size: float, f: float, ratio: float, epochs: int) -> float:
    """Stable text score: more text pre-training (larger f) helps, more image data costs a little."""
    return 0.15 + 0.12 * scale_size + 0.06 * f - 0.05 * ratio - 0.01 * max(epochs - 2, 0)


class _Writer:
    """Writes the steps of one synthetic study under root and collects the manifest."""

    def __init__(self, root: Path, spec: SyntheticSpec) -> None:
        self.root, self.spec = root, spec
        self.rng = np.random.default_rng(spec.seed)
        self.manifest: list[dict] = []
        self.ids: dict[str, list[str]] = {}
        self.evals: list[tuple[str, dict, list[list[str]]]] = []  # (id, meta, parents), written last
        self.branches_to_fail = spec.failed_branches  # counted down from the last branch written
        self.branches_left = 0  # set once the grid is known

    def planned(self, kind: str, sid: str, parents: list[list[str]], meta: dict) -> None:
        """A step the study plans but that never ran (its parent failed): manifest only."""
        self.manifest.append({"step_id": sid, "kind": kind, "parents": parents, "meta": meta})

    def step(self, kind: str, sid: str, parents: list[list[str]], meta: dict,
             metrics: pa.Table | None = None, evals: pa.Table | None = None,
             flops: float = 0.0, status: str = sf.DONE) -> None:
        self.manifest.append({"step_id": sid, "kind": kind, "parents": parents, "meta": meta})
        self.ids.setdefault(kind, []).append(sid)
        paths = sf.step_paths(self.root, kind, sid)
        _write_json(paths.config, {"step_id": sid, "kind": kind, "parents": parents,
                                        "meta": meta, "code_salt": 1,
                                        "config": {"seed": meta.get("seed"), "tokens": meta.get("tokens")}})
        if metrics is not None:
            _write_parquet(paths.metrics, metrics)
        if evals is not None:
            _write_parquet(paths.evals, evals)
        if status == sf.RUNNING:
            _write_json(paths.progress, {"step_id": sid, "fraction": 0.5})
        elif status == sf.FAILED:
            sf.write_failure(paths.dir, sf.Failure(step_id=sid, kind=kind, reason="oom", error="CUDA out of memory",
                                                   traceback="...", finished_at="2025-01-02T00:00:00"))
        else:
            sf.write_result(paths.dir, self._result(sid, kind, meta, flops))

    def _result(self, sid: str, kind: str, meta: dict, flops: float) -> dict:
        n = meta.get("params") or 0
        return {"step_id": sid, "kind": kind, "status": sf.DONE, "tokens": meta.get("tokens") or 0,
                "flops": flops, "params": {"embedding": n // 5, "non_embedding": n - n // 5,
                                           "lm_total": n, "vision": 86_000_000, "projector": 2_000_000},
                "wall_time_s": float(self.rng.uniform(10, 100)), "peak_memory_bytes": 2 ** 30,
                "code_salt": 1, "git_commit": "0" * 40, "started_at": "2025-01-01T00:00:00+00:00",
                "finished_at": "2025-01-01T01:00:00+00:00", "hostname": "synthetic", "device": "cpu"}

    def metrics(self, names_values: dict[str, np.ndarray], tokens: np.ndarray) -> pa.Table:
        k = len(tokens)
        steps = np.arange(1, k + 1, dtype=np.int64)
        return pa.table({"step": np.tile(steps, len(names_values)),
                         "tokens": np.tile(tokens.astype(np.int64), len(names_values)),
                         "name": np.repeat(list(names_values), k),
                         "value": np.concatenate(list(names_values.values())).astype(np.float64)},
                        schema=METRICS_SCHEMA)

    def eval_table(self, sid: str, vl: float | None, text: float, losses: tuple[float, ...]) -> pa.Table:
        rows = [(t, "text", text, c) for t, c in TEXT_TASKS.items()]
        if vl is not None:
            rows += [(t, "vl", vl, c) for t, c in VL_TASKS.items()]
        value = [float(np.clip(c + s * (1 - c) + self.rng.normal(0, 0.01), 0, 1)) for _, _, s, c in rows]
        # Each task also reports a second metric (as multiple choice does, acc and acc_norm): only
        # the primary row may feed a stable score, so a reader that ignores the flag is caught.
        # Then the held-out losses (text, then caption when the model has images), from their own
        # noise stream so that adding them left every score of the default studies as it was.
        n = len(rows)
        noise = np.random.default_rng([self.spec.seed, int(sid, 16)]).normal(0, 0.003, len(losses))
        tasks = list(sf.HELDOUT_TASKS)[:len(losses)]
        return pa.table({"task": [r[0] for r in rows] * 2 + tasks,
                         "group": [r[1] for r in rows] * 2 + [sf.HELDOUT_TASKS[t] for t in tasks],
                         "metric": ["acc"] * n + ["acc_norm"] * n + [LOSS_METRIC] * len(losses),
                         "value": value + [0.0] * n + [float(v + e) for v, e in zip(losses, noise)],
                         "chance": [r[3] for r in rows] * 2 + [None] * len(losses),
                         "n": [500] * 2 * n + [16_384] * len(losses),
                         "primary_metric": [True] * n + [False] * n + [False] * len(losses)})


def _size(scale: str) -> float:
    """A scale's position on a log axis from 1M (0) to 1.4B (1) parameters; CPU sizes fall below 0."""
    return (math.log(SCALE_PARAMS[scale]) - math.log(1e6)) / (math.log(1.4e9) - math.log(1e6))


def write_synthetic_study(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> SyntheticStudy:
    """Write every step of a synthetic study (and its manifest) under root; seeded by spec.seed."""
    root = Path(root)
    w = _Writer(root, spec)
    enc = _sid("encoder", spec.seed)
    w.step("encoder", enc, [], {"image_data": "world"})
    grids = {scale: spec.grid(scale) for scale in spec.scales}
    w.branches_left = sum(len(g) for g in grids.values()) * len(spec.instruction_shares)
    for scale, grid in grids.items():
        for seed in dict.fromkeys(s for _, _, s in grid):
            _write_chain(w, spec, scale, seed, enc, [(f, r) for f, r, s in grid if s == seed])
    grid = [cell for g in grids.values() for cell in g]
    _write_evals(w, spec)
    manifest = root / "studies" / f"{spec.study}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    axes = {"scale": list(spec.scales), "intro_fraction": sorted({f for f, _, _ in grid}),
            "image_ratio": sorted({r for _, r, _ in grid}), "instruction_share": list(spec.instruction_shares),
            "finetune_epochs": list(spec.finetune_epochs), "seed": sorted({s for _, _, s in grid}),
            "schedule": [spec.schedule]}
    _write_json(manifest, {"name": spec.study, "study_file": f"studies/{spec.study}.toml",
                           "written_at": "2025-01-01T00:00:00+00:00", "axes": axes, "steps": w.manifest})
    return SyntheticStudy(root=root, manifest=manifest, step_ids=w.ids)


def _write_chain(w: _Writer, spec: SyntheticSpec, scale: str, seed: int, enc: str,
                 cells: list[tuple[float, float]]) -> None:
    """One trunk, its evaluations, and everything that branches from it."""
    n, size, k = SCALE_PARAMS[scale], _size(scale), spec.metric_rows
    total = 20 * n  # trunk tokens (the synthetic world is 1x Chinchilla, not 150x)
    base = {"scale": scale, "params": n, "text_data": "world", "seed": seed}
    trunk = _sid("trunk", scale, seed)
    frac = np.linspace(0, 1, k + 1)[1:]
    toks = frac * total
    loss = 2.0 + 400 / n ** 0.34 + 400 / toks ** 0.28 + w.rng.normal(0, 0.01, k)
    w.step("trunk", trunk, [], {**base, "tokens": total},
           w.metrics({"train_loss": loss, "text_loss": loss + 0.02, "lr": lr_curve(frac, peak=3e-3),
                      "grad_norm": 1 / (1 + 5 * frac), "tokens_per_s": np.full(k, 1e5)}, toks),
           flops=6.0 * n * total)
    checkpoints = {"final": [None], "none": [], "checkpoints": sorted({f for f, _ in cells})}[spec.trunk_evals]
    for checkpoint in checkpoints:  # text-only evaluations of the trunk, as `vlmsweep run` plans them
        sid = _sid("eval", trunk) if checkpoint is None else _sid("eval", trunk, checkpoint)
        w.evals.append((sid, {**base, "stage": "trunk", "checkpoint": checkpoint}, [["trunk", trunk]]))
    for f, ratio in cells:
        policy = "rewarm" if spec.schedule == "rewarm" or (spec.schedule == "paper" and f in (0.0, 1.0)) else "continue"
        for share in spec.instruction_shares:
            _write_branch(w, spec, dict(base, intro_fraction=f, image_ratio=ratio, image_data="world",
                                        instruction_share=share, schedule=spec.schedule,
                                        schedule_policy=policy), trunk, enc, size, total)


def _write_branch(w: _Writer, spec: SyntheticSpec, meta: dict, trunk: str, enc: str, size: float,
                  trunk_tokens: int) -> None:
    n, k, f = meta["params"], spec.metric_rows, meta["intro_fraction"]
    stage_tokens = 20 * n
    branch = _sid("branch", trunk, f, meta["image_ratio"], meta["instruction_share"])
    parents = [["trunk", trunk], ["encoder", enc]]
    w.branches_left -= 1
    if w.branches_left < w.branches_to_fail:  # failed: nothing below it ever ran
        w.step("branch", branch, parents, {**meta, "tokens": stage_tokens}, status=sf.FAILED)
        for epochs in spec.finetune_epochs:
            ft = _sid("finetune", branch, epochs)
            w.planned("finetune", ft, [["branch", branch]], {**meta, "finetune_epochs": epochs})
            w.planned("eval", _sid("eval", ft), [["finetune", ft]],
                      {**meta, "finetune_epochs": epochs, "stage": "finetune"})
        return
    frac = np.linspace(0, 1, k + 1)[1:]
    if meta["schedule_policy"] == "rewarm":
        lr = lr_curve(frac, peak=3e-3)
    else:  # continue from where the trunk's schedule stands, decay over the image stage
        start = float(lr_curve(np.array([f]), peak=3e-3)[0])
        lr = 3e-4 + (start - 3e-4) * 0.5 * (1 + np.cos(np.pi * frac))
    toks = frac * stage_tokens  # counted from the branch's start, as models/stages writes them
    loss = 2.1 + 300 / n ** 0.34 + 150 / (toks + f * trunk_tokens + 1e6) ** 0.28 + 0.3 * meta["image_ratio"]
    caption = loss + 0.4 * (1 - frac) + w.rng.normal(0, 0.01, k)
    w.step("branch", branch, parents, {**meta, "tokens": stage_tokens},
           w.metrics({"train_loss": loss, "text_loss": loss - 0.05, "caption_loss": caption, "lr": lr,
                      "grad_norm": 1 / (1 + 5 * frac)}, toks), flops=6.0 * n * stage_tokens)
    if spec.pretrained_evals:
        w.evals.append((_sid("eval", branch), {**meta, "stage": "branch", "checkpoint": None,
                                               "_scores": _model_scores(spec, meta, size, None)},
                        [["branch", branch]]))
    for epochs in spec.finetune_epochs:
        ft = _sid("finetune", branch, epochs)
        ft_meta = {**meta, "finetune_epochs": epochs, "tokens": 1_000_000}
        steps = np.linspace(0, 1, max(k // 4, 2) + 1)[1:]
        w.step("finetune", ft, [["branch", branch]], ft_meta,
               w.metrics({"train_loss": 1.5 - 0.3 * steps, "instruction_loss": 1.5 - 0.3 * steps,
                          "lr": lr_curve(steps, peak=1e-4)}, steps * 1_000_000))
        w.evals.append((_sid("eval", ft), {**ft_meta, "stage": "finetune", "checkpoint": None,
                                           "_scores": _model_scores(spec, meta, size, epochs)},
                        [["finetune", ft]]))


def _model_scores(spec: SyntheticSpec, meta: dict, size: float, epochs: int | None) -> tuple[float, ...]:
    """(VL, text, held-out text loss, caption loss) of a branch (epochs None: before fine-tuning)."""
    n, f, ratio, share = meta["params"], meta["intro_fraction"], meta["image_ratio"], meta["instruction_share"]
    law = spec.law or KnownLaw()
    losses = (law.text_loss(n, f, ratio), law.caption_loss(n, f, ratio))
    if spec.law is not None:
        return (law.vl(n, f, ratio), law.text(n, f, ratio), *losses)
    if epochs is None:
        return (vl_shape(size, f, ratio, share, 0) - 0.05, text_shape(size, f, ratio, 0), *losses)
    return (vl_shape(size, f, ratio, share, epochs), text_shape(size, f, ratio, epochs), *losses)


def _trunk_text(scale: str, checkpoint: float | None) -> float:
    """Stable text score of the text-only trunk, lower at an early checkpoint."""
    full = 0.23 + 0.12 * _size(scale)
    return full if checkpoint is None else full * (0.4 + 0.6 * checkpoint)


def _write_evals(w: _Writer, spec: SyntheticSpec) -> None:
    """Eval steps last, so the final `unfinished` / `failed` ones can be left without a result."""
    n_evals = len(w.evals)
    for i, (sid, meta, parents) in enumerate(w.evals):
        scores = meta.pop("_scores", None)
        if scores is None:  # the text-only trunk: its held-out text loss falls as it trains
            checkpoint = meta.get("checkpoint")
            loss = (spec.law or KnownLaw()).text_loss(meta["params"], None, 0.0) + 0.3 * (1 - (checkpoint or 1.0))
            scores = (None, _trunk_text(meta["scale"], checkpoint), loss)
        status = (sf.RUNNING if i >= n_evals - spec.unfinished else
                  sf.FAILED if i >= n_evals - spec.unfinished - spec.failed else sf.DONE)
        w.step("eval", sid, parents, {**meta, "tokens": 0},
               evals=None if status != sf.DONE else w.eval_table(sid, scores[0], scores[1], scores[2:]),
               status=status)
