"""Expand a study into a DAG of content-addressed steps, and account for what it costs.

encoder ─┐
trunk(scale, text data, seed) ──ckpt@f──► branch(f, image data, ratio, share, schedule)
                                              ├──► finetune(epochs) ──► eval
                                              └──► eval (pre-trained)      trunk ──► eval@f (text)
A step shared by many cells (one trunk per scale × text data × seed, one branch per fine-tune
epoch count) appears once: steps are keyed by id. Status comes from files only
(`models.stepfiles.file_state`); `sweep.status` adds what the journal and the scheduler know.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from models import stepfiles
from models.accounting import param_counts, train_flops, vision_param_count
from models.presets import PRESETS, WORLD_VOCAB
from models.steps import BranchConfig, EncoderConfig, EvalConfig, FinetuneConfig, Step, TrunkConfig, replay_rows
from models.trackers import META_KEY
from sweep.spec import AXES, Cell, Study

IMAGE_POSITION_SHARE = 0.5  # plan-time estimate: share of image-data tokens that are image positions


@dataclass(frozen=True, kw_only=True, slots=True)
class StepCost:
    tokens: int | None  # tokens trained on (None = unknown before the data is read)
    flops: int | None


@dataclass(frozen=True, kw_only=True)
class Plan:
    study: Study
    root: Path
    steps: tuple[Step, ...]  # topological order: parents before children
    cells: dict[Cell, dict[str, str]] = field(repr=False)  # cell → {"trunk": id, "branch": id, ...}

    @cached_property
    def by_id(self) -> dict[str, Step]:
        return {s.step_id: s for s in self.steps}

    def levels(self) -> list[list[Step]]:
        """DAG levels: a step's level is the length of its longest chain of parents."""
        depth: dict[str, int] = {}
        for s in self.steps:
            depth[s.step_id] = 1 + max((depth[p] for _, p in s.parents), default=-1)
        out: list[list[Step]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for s in self.steps:
            out[depth[s.step_id]].append(s)
        return out

    def dir(self, step: Step) -> Path:
        return stepfiles.step_dir(self.root, step.kind, step.step_id)

    def status(self, step: Step) -> str:
        """done | failed | missing, from the step's files only (`models.stepfiles.file_state`)."""
        return stepfiles.file_state(step, self.root)

    def cost(self, step: Step) -> StepCost:
        return step_cost(step)

    def children(self, step_id: str) -> list[Step]:
        return [s for s in self.steps if any(p == step_id for _, p in s.parents)]


def plan_study(study: Study, root: str | Path | None = None) -> Plan:
    """The study's DAG under `root` (default: the study's own root)."""
    return plan_cells(study, study.cells, root)


def plan_cells(study: Study, cells: Iterable[Cell], root: str | Path | None = None, *,
               trunk_lattice: Iterable[float] = ()) -> Plan:
    """The DAG of any cells of a study (adaptive search plans its trials this way).

    `trunk_lattice` adds checkpoint fractions to every trunk, so later cells at those fractions
    branch from checkpoints that already exist.
    """
    builder = _Builder(study, extra_fractions=tuple(trunk_lattice))
    ids = {cell: builder.add_cell(cell) for cell in cells}
    return Plan(study=study, root=Path(root).resolve() if root else study.root,
                steps=builder.finish(), cells=ids)


class _Builder:
    """Adds each cell's chain, reusing steps already added (same id = same step)."""

    def __init__(self, study: Study, extra_fractions: tuple[float, ...] = ()):
        self.study = study
        self.extra_fractions = extra_fractions
        self.steps: dict[str, Step] = {}
        self.trunk_fractions: dict[str, set[float]] = {}

    def _add(self, step: Step) -> str:
        sid = step.step_id
        self.steps.setdefault(sid, step)
        return sid

    def add_cell(self, cell: Cell) -> dict[str, str]:
        st = self.study
        preset = PRESETS[cell.scale]
        train = st.train_defaults(cell.scale)
        lm_total = param_counts(preset.model)["lm_total"]
        axes = cell.as_dict() | {"params": lm_total}
        trunk_seed = cell.seed if st.train.trunk_seed is None else st.train.trunk_seed
        trunk_axes = {k: axes[k] for k in ("scale", "text_data", "params")} | {"seed": trunk_seed}
        trunk_tokens = int(round(st.train.trunk_tokens_per_param * lm_total))
        trunk = Step(kind="trunk", config=TrunkConfig(
            lm=preset.model.lm, train=train, data=st.data[cell.text_data], tokens=trunk_tokens,
            seed=trunk_seed, on_bad_record=st.train.on_bad_record),
            meta=_meta(trunk_axes, "trunk", trunk_tokens, **self._run(cell.scale, "trunk")))
        trunk_id = self._add(trunk)
        fractions = self.trunk_fractions.setdefault(trunk_id, set(self.extra_fractions))
        fractions.add(cell.intro_fraction)
        ids = {"trunk": trunk_id}

        vision = st.vision_config(cell.scale)
        parents = [("trunk", trunk_id)]
        if vision.needs_encoder_step:
            ids["encoder"] = self._add(self._encoder(vision))
            parents.append(("encoder", ids["encoder"]))
        policy = _policy(cell.schedule, cell.intro_fraction)
        image_tokens = int(round(st.train.image_tokens_per_param * lm_total))
        instruction = st.data[st.train.instruction_data] if cell.instruction_share > 0 else None
        branch = Step(kind="branch", config=BranchConfig(
            intro_fraction=cell.intro_fraction, schedule=policy, image_data=st.data[cell.image_data],
            instruction_data=instruction, image_ratio=cell.image_ratio,
            instruction_share=cell.instruction_share, tokens=image_tokens, vision=vision,
            projector=st.projector_config(cell.scale), train=train,
            loss_on_image_positions=st.train.loss_on_image_positions,
            on_bad_record=st.train.on_bad_record, seed=cell.seed),
            parents=tuple(parents),
            meta=_meta(axes, "branch", image_tokens, schedule_policy=policy, **self._run(cell.scale, "branch")))
        ids["branch"] = self._add(branch)

        ft = st.finetune
        finetune = Step(kind="finetune", config=FinetuneConfig(
            data=st.data[ft.data], epochs=cell.finetune_epochs, lr=ft.lr, batch_size=ft.batch_size,
            max_samples=ft.samples, seed=cell.seed, seq_len=train.image_stage_seq_len,
            text_replay=ft.text_replay,
            replay_data=st.data[cell.text_data] if ft.text_replay > 0 else None),
            parents=(("branch", ids["branch"]),),
            meta=_meta(axes, "finetune", _finetune_tokens(ft, cell.finetune_epochs, train),
                       schedule_policy=policy, **self._run(cell.scale, "finetune")))
        ids["finetune"] = self._add(finetune)
        ids["eval"] = self._add(self._eval("finetune", ids["finetune"], ("vl", "text"), cell.seed,
                                           _meta(axes, "eval", 0, schedule_policy=policy, stage="finetune")))
        if st.eval.pretrained:
            pre_axes = axes | {"finetune_epochs": None}
            ids["eval_pretrained"] = self._add(self._eval(
                "branch", ids["branch"], ("vl", "text"), cell.seed,
                _meta(pre_axes, "eval", 0, schedule_policy=policy, stage="branch")))
        if st.eval.trunk_checkpoints:
            ids["eval_trunk"] = self._add(self._eval(
                "trunk", trunk_id, ("text",), trunk_seed,
                _meta(trunk_axes, "eval", 0, stage="trunk", checkpoint=cell.intro_fraction),
                checkpoint=cell.intro_fraction))
        return ids

    def _run(self, scale: str, kind: str) -> dict[str, Any]:
        """meta["run"]: how an LM step runs (RunOptions fields), never part of its id."""
        run = self.study.backend.run_options(scale, kind) | self.study.train.run_options()
        return {"run": run} if any(run.values()) or "data_workers" in run else {}

    def _tracking(self) -> dict[str, Any]:
        """meta["logging"]: the study's trackers, its (possibly renamed) name as the runs' group."""
        settings = self.study.logging
        if settings is None:
            return {}
        return {META_KEY: replace(settings, study=self.study.name).to_meta()}

    def _encoder(self, vision) -> Step:
        enc = self.study.encoder
        config = EncoderConfig(vision=vision, data=self.study.data[enc.data], text_width=enc.text_width,
                               text_layers=enc.text_layers, vocab_size=WORLD_VOCAB,
                               samples=enc.samples, batch_size=enc.batch_size, lr=enc.lr, seed=enc.seed)
        guard = self.study.train.run_options()  # the encoder trains under the same guard
        return Step(kind="encoder", config=config,
                    meta={"image_data": enc.data, "samples": enc.samples, "tokens": 0}
                    | ({"run": guard} if guard else {}))

    def _eval(self, role: str, parent: str, groups: tuple[str, ...], seed: int,
              meta: dict[str, Any], checkpoint: float | None = None) -> Step:
        ev = self.study.eval
        config = EvalConfig(data=tuple(self.study.data[name] for name in ev.data), tasks=ev.tasks,
                            groups=groups, n_per_task=ev.n_per_task, checkpoint=checkpoint, seed=seed,
                            stable_metric=ev.stable_metric, chance=ev.chance, prompt=ev.prompt,
                            max_new_tokens=ev.max_new_tokens, text_harness=ev.text_harness,
                            num_fewshot=ev.num_fewshot)
        return Step(kind="eval", config=config, parents=((role, parent),), meta=meta)

    def finish(self) -> tuple[Step, ...]:
        # Checkpoint fractions are not part of a trunk's id: a trunk asked for one more
        # checkpoint replays from the nearest earlier one instead of retraining.
        out = []
        tracking = self._tracking()
        for step in self.steps.values():
            if step.kind == "trunk":
                fractions = sorted(self.trunk_fractions[step.step_id])
                step = Step(kind=step.kind, config=step.config, parents=step.parents,
                            meta={**step.meta, "checkpoint_fractions": fractions})
            if tracking:
                step = Step(kind=step.kind, config=step.config, parents=step.parents,
                            meta={**step.meta, **tracking})
            out.append(step)
        order = {"encoder": 0, "trunk": 1, "branch": 2, "finetune": 3, "eval": 4}
        # Stable sort by kind puts every parent before its children (evals of trunks and
        # branches only ever depend on earlier kinds).
        return tuple(sorted(out, key=lambda s: order[s.kind]))


def _policy(schedule: str, fraction: float) -> str:
    if schedule == "paper":
        return "rewarm" if fraction in (0.0, 1.0) else "continue"
    return schedule


def _meta(axes: dict[str, Any], kind: str, tokens: int | None, **extra: Any) -> dict[str, Any]:
    keep = {"trunk": ("scale", "text_data", "seed", "params"),
            "branch": ("scale", "text_data", "image_data", "intro_fraction", "image_ratio",
                       "instruction_share", "seed", "schedule", "params"),
            }.get(kind, tuple(axes))
    meta = {k: axes[k] for k in keep if k in axes}
    return meta | {"tokens": tokens} | extra


def _finetune_tokens(ft, epochs: int, train) -> int | None:
    """The fine-tune's token budget (rows × seq_len, replayed text rows included)."""
    if ft.samples == 0:
        return None
    batches = -(-ft.samples // ft.batch_size) * epochs
    return batches * (ft.batch_size + replay_rows(ft.batch_size, ft.text_replay)) * train.image_stage_seq_len


def step_cost(step: Step) -> StepCost:
    """Tokens and training FLOPs of one step (6N + attention for the LM; estimates documented)."""
    c = step.config
    if step.kind == "trunk":
        return StepCost(tokens=c.tokens, flops=train_flops(c.lm, c.tokens, c.train.seq_len))
    if step.kind == "encoder":
        vis = vision_param_count(c.vision) or 0
        return StepCost(tokens=c.samples * c.vision.n_patches,
                        flops=6 * vis * c.vision.n_patches * c.samples)
    if step.kind == "branch":
        lm = PRESETS[step.meta["scale"]].model.lm if "scale" in step.meta else None
        vis = vision_param_count(c.vision) or 0
        image_positions = int(c.tokens * c.image_ratio * IMAGE_POSITION_SHARE)
        vision_flops = (2 if c.vision.frozen else 6) * vis * image_positions
        lm_flops = train_flops(lm, c.tokens, c.train.image_stage_seq_len) if lm else 0
        return StepCost(tokens=c.tokens, flops=lm_flops + vision_flops)
    if step.kind == "finetune":
        tokens = step.meta.get("tokens")
        lm = PRESETS[step.meta["scale"]].model.lm
        return StepCost(tokens=tokens, flops=None if tokens is None else
                        train_flops(lm, tokens, c.seq_len))
    return StepCost(tokens=0, flops=0)


def sharing_savings(plan: Plan) -> dict[str, int | float]:
    """Tokens saved by branching from shared trunks rather than training each branch from scratch.

    Without sharing, every branch would train its own text-only prefix of f·T tokens, and a trunk
    whose final model the study evaluates (the text-only baseline) would still train its T; with
    sharing, each trunk trains its T once. saved = Σ_branches f·T − Σ_other trunks T: negative only
    when a trunk trains past the last checkpoint any step uses (a grid without f = 1).
    """
    trunk_tokens = {s.step_id: s.config.tokens for s in plan.steps if s.kind == "trunk"}
    evaluated = {pid for s in plan.steps if s.kind == "eval" and (s.config.checkpoint or 1.0) >= 1.0
                 for role, pid in s.parents if role == "trunk"}
    prefix = sum(s.config.intro_fraction * trunk_tokens[s.parent("trunk")]
                 for s in plan.steps if s.kind == "branch")
    shared_total = sum(step_cost(s).tokens or 0 for s in plan.steps)
    unshared_total = shared_total + prefix - sum(t for sid, t in trunk_tokens.items() if sid not in evaluated)
    saved = unshared_total - shared_total
    return {"tokens_shared": int(shared_total), "tokens_unshared": int(round(unshared_total)),
            "tokens_saved": int(round(saved)),
            "saved_percent": 100.0 * saved / unshared_total if unshared_total else 0.0}


def write_study_manifest(plan: Plan) -> Path:
    """<root>/studies/<name>.json: which steps belong to the study (for ingest and the app)."""
    target = plan.root / "studies" / f"{plan.study.name}.json"
    manifest = {
        "name": plan.study.name, "study_file": str(plan.study.path),
        "written_at": stepfiles.now_iso(),
        "axes": {a: list(plan.study.axes[a]) for a in AXES},
        "stable_score": plan.study.eval.stable_score,
        "steps": [{"step_id": s.step_id, "kind": s.kind, "parents": [list(p) for p in s.parents],
                   "meta": dict(s.meta)} for s in plan.steps],
    }
    stepfiles.write_json(target, manifest, indent=1)
    return target
