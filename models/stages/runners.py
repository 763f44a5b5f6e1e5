"""Per-kind step runners: build the model, data and schedule a step needs, resume it, train it.

`models.run.run_step` writes the step's files (config, result, failure); these functions return
what goes in them. Parents are found through their configs (`models.steps.load_step_config`) and
final weights (`models.stepfiles`); a branch starts from the trunk's full checkpoint at its intro
fraction.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable

from models import checkpoint as ck
from models import stepfiles as sf
from models.accounting import train_flops
from models.config import LMConfig, OptimConfig, ProjectorConfig, RunOptions, TrainDefaults, VisionConfig
from models.distributed import ranks_from_env
from models.schedules import Schedule, branch_schedule, finetune_schedule, steps_for, trunk_schedule
from models.stages.batches import micro_batches, split_rows
from models.stages.checkpointer import Checkpointer
from models.stages.context import Context, RunOutput
from models.stages.encoder import MAX_CAPTION_LEN, ContrastiveModel, EncoderModule
from models.stages.eval_step import run_eval
from models.stages.guard import Guard
from models.stages.lm import BranchModule, FinetuneModule, TrunkModule
from models.stages.module import StageModule
from models.stages.sharding import load_optimizer_state
from models.stages.tracking import open_tracking
from models.stages.trainer import fit
from models.stepfiles import fraction_step
from models.steps import load_step_config, replay_rows
from models.vlm import VLM


def _optim(train: TrainDefaults) -> OptimConfig:
    return OptimConfig(weight_decay=train.weight_decay, beta1=train.beta1, beta2=train.beta2,
                       grad_clip=train.grad_clip)


def _check_vocab(tok: Any, lm: LMConfig, where: str) -> None:
    if tok.vocab_size > lm.vocab_size:
        raise ValueError(f"{where}: tokenizer has {tok.vocab_size} tokens but lm.vocab_size is "
                         f"{lm.vocab_size}")


def _restore(module: StageModule, stream: Any, payload: dict) -> None:
    """Continue exactly where a full checkpoint left off."""
    module.model.load_state_dict(payload["model"])
    module.step_count, module.rows = int(payload["step"]), list(payload["metrics"])
    module.data_state = payload["data"]
    stream.load_state_dict(payload["data"])
    module.resume = {"optimizer": payload["optimizer"], "rng": payload["rng"]}


def _train(ctx: Context, module: StageModule, stream: Any, total: int, *,
           fractions: dict[int, list[Path]] | None = None, stop_at: int | None = None,
           split: Callable | None = None, options: RunOptions | None = None,
           track: bool = True) -> None:
    total_tokens = total * module.tokens_per_step
    module.guard = Guard.from_options(options or ctx.options, restore=_rewinder(ctx, module))
    checkpointer = Checkpointer(
        latest=sf.paths_of(ctx.root, ctx.step).latest,
        total_steps=total, fraction_paths=fractions or {}, options=options or ctx.options,
        progress=lambda tokens, tps, wait=None: ctx.progress(tokens, total_tokens, tps, wait),
        stop_at=stop_at)
    # A trunk replaying a fraction checkpoint retrains steps its run holds already: not tracked.
    tracking = open_tracking(ctx.step, ctx.dir) if track and ctx.writes_files else None
    try:
        fit(module, stream, options=options or ctx.options, total_steps=total,
            checkpointer=checkpointer, split=split, tracking=tracking)
    finally:
        if tracking:
            tracking.close()


def _rewinder(ctx: Context, module: StageModule) -> Callable[[], int | None]:
    """Loads the step's furthest checkpoint at or before the module's step into its weights and
    optimizer state (a rewind, models.stages.guard); its step, or None when there is none (or the
    state is sharded: FSDP rewinds are not supported)."""
    def restore() -> int | None:
        saved = _saved_trunk_states(ctx) if ctx.step.kind == "trunk" else []
        payload = _resume_payload(ctx, [(s, p) for s, p in saved if s <= module.step_count])
        if payload is None or module.sharded or int(payload["step"]) > module.step_count:
            return None
        module.model.load_state_dict(payload["model"])
        load_optimizer_state(module.trainer.strategy, module.optimizers().optimizer, payload["optimizer"])
        return int(payload["step"])
    return restore


def _save_weights(ctx: Context, module: StageModule) -> None:
    """The final weights (model.pt), from rank 0; under FSDP as gathered when training ended."""
    if not ctx.writes_files:
        return
    state = module.final_weights or {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
    ck.save_torch(sf.paths_of(ctx.root, ctx.step).weights, {"model": state})


def _splitter(stream: Any, options: RunOptions, image_id: int, image_tokens: int) -> Callable | None:
    """What the loader does to each global batch: this rank's rows (DDP), then micro-batches.

    A data-layer stream gives this rank only its rows (`select_rows`: the other rows' images are
    never decoded where the source allows); another (the tests' synthetic one) is split here.
    """
    ranks, micro = ranks_from_env(), options.micro_batch
    world = ranks.world
    if world > 1 and hasattr(stream, "select_rows"):
        stream.select_rows(ranks.rank, world)
        world = 1
    if world <= 1 and micro <= 0:
        return None

    def split(batch: dict) -> dict:
        batch = split_rows(batch, ranks.rank, world, image_id, image_tokens)
        return micro_batches(batch, micro, image_id, image_tokens)
    return split


# -- trunk ------------------------------------------------------------------------------------
def _trunk_parts(ctx: Context) -> tuple[TrunkModule, Any, int, dict[int, list[Path]]]:
    cfg = ctx.step.config
    tok = ctx.data.get_tokenizer(cfg.data)
    _check_vocab(tok, cfg.lm, f"trunk {ctx.step.step_id}")
    batch, seq = cfg.train.batch_size, cfg.train.seq_len
    total = steps_for(cfg.tokens, batch, seq)
    ck.seed_everything(cfg.seed)
    module = TrunkModule(VLM(cfg.lm), trunk_schedule(cfg.train, total), optim=_optim(cfg.train),
                         tokens_per_step=batch * seq, image_id=tok.image_id, z_loss=cfg.train.z_loss)
    stream = ctx.data.text_stream(cfg.data, tok, batch_size=batch, seq_len=seq, seed=cfg.seed,
                                  on_bad_record=cfg.on_bad_record)
    module.data_state = stream.state_dict()
    fractions: dict[int, list[Path]] = {}
    paths = sf.paths_of(ctx.root, ctx.step)
    for f in ctx.step.meta.get("checkpoint_fractions", ()):
        s = fraction_step(float(f), cfg.tokens, batch * seq)
        fractions.setdefault(s, []).append(paths.fraction(float(f)))
    return module, stream, total, fractions


def _saved_trunk_states(ctx: Context) -> list[tuple[int, Path]]:
    """(step, path) of every fraction checkpoint this trunk has on disk."""
    cfg = ctx.step.config
    return sorted((fraction_step(f, cfg.tokens, cfg.train.batch_size * cfg.train.seq_len), path)
                  for f, path in sf.paths_of(ctx.root, ctx.step).fraction_checkpoints())


def _resume_payload(ctx: Context, saved: list[tuple[int, Path]] = ()) -> dict | None:
    """The furthest readable checkpoint of this step: ckpt/latest.pt, or (a trunk) one of its
    fraction checkpoints `saved` as (step, path), whichever is further; None to start afresh.

    A damaged one is passed over, saying so on stderr, for the next furthest; when none loads, the
    error names the file to delete (a damaged latest.pt must not fail every retry).
    """
    latest = sf.paths_of(ctx.root, ctx.step).latest
    loaded: list[tuple[int, Path, dict]] = []
    errors: list[ck.CheckpointError] = []
    if latest.exists():
        try:
            payload = ck.load_torch(latest)
            loaded.append((int(payload["step"]), latest, payload))
        except ck.CheckpointError as exc:
            errors.append(exc)
    reached = loaded[0][0] if loaded else -1
    for step, path in sorted(saved, reverse=True):  # furthest first; stop at latest.pt's step
        if step <= reached:
            break
        try:
            loaded.append((step, path, ck.load_torch(path)))
            break
        except ck.CheckpointError as exc:
            errors.append(exc)
    if not loaded:
        if errors:
            first = errors[0]
            raise ck.CheckpointError(first.path, f"{str(first).split(': ', 1)[1]}; delete it to "
                                     "restart the step from its beginning")
        return None
    step, path, payload = max(loaded, key=lambda c: c[0])
    for exc in errors:
        print(f"vlmsweep: {exc}; resuming from {path} (step {step}) instead", file=sys.stderr, flush=True)
    return payload


def run_trunk(ctx: Context) -> RunOutput:
    cfg = ctx.step.config
    module, stream, total, fractions = _trunk_parts(ctx)
    payload = _resume_payload(ctx, _saved_trunk_states(ctx))
    if payload is not None:
        _restore(module, stream, payload)
    _train(ctx, module, stream, total, fractions=fractions,
           split=_splitter(stream, ctx.options, module.image_id, 1))
    _save_weights(ctx, module)
    tokens = total * module.tokens_per_step
    return RunOutput(tokens=tokens, flops=train_flops(cfg.lm, tokens, cfg.train.seq_len),
                     params=module.model.param_counts(), metrics=module.rows, evals=[])


def replay_trunk_fractions(ctx: Context) -> None:
    """A done trunk asked for fractions it never saved: replay from the nearest earlier one."""
    module, stream, total, fractions = _trunk_parts(ctx)
    missing = {s: [p for p in ps if not p.exists()] for s, ps in fractions.items()}
    missing = {s: ps for s, ps in missing.items() if ps}
    if not missing:
        return
    earlier = [c for c in _saved_trunk_states(ctx) if c[0] <= min(missing)]
    if earlier:
        _restore(module, stream, ck.load_torch(max(earlier, key=lambda c: c[0])[1]))
    quiet = dataclasses.replace(ctx.options, checkpoint_every_steps=0, checkpoint_every_s=math.inf)
    _train(ctx, module, stream, total, fractions=missing, stop_at=max(missing), options=quiet,
           split=_splitter(stream, quiet, module.image_id, 1), track=False)


# -- encoder ----------------------------------------------------------------------------------
def run_encoder(ctx: Context) -> RunOutput:
    cfg = ctx.step.config
    tok = ctx.data.get_tokenizer(cfg.data)
    ck.seed_everything(cfg.seed)
    model = ContrastiveModel(cfg.vision, max(cfg.vocab_size, tok.vocab_size), cfg.text_width,
                             cfg.text_layers, tok.pad_id)
    total = -(-cfg.samples // cfg.batch_size)
    schedule = Schedule(peak_lr=cfg.lr, floor_lr=0.1 * cfg.lr, warmup_steps=min(100, total // 10),
                        total_steps=total)
    module = EncoderModule(model, schedule, optim=OptimConfig(weight_decay=0.1, beta2=0.95),
                           samples_per_step=cfg.batch_size)
    stream = ctx.data.caption_pairs(cfg.data, tok, batch_size=cfg.batch_size,
                                    image_size=cfg.vision.image_size,
                                    max_caption_len=MAX_CAPTION_LEN, seed=cfg.seed)
    module.data_state = stream.state_dict()
    payload = _resume_payload(ctx)
    if payload is not None:
        _restore(module, stream, payload)
    _train(ctx, module, stream, total)
    ck.save_torch(sf.paths_of(ctx.root, ctx.step).weights,
                  {"model": {k: v.detach().cpu() for k, v in model.vision.state_dict().items()}})
    samples = total * cfg.batch_size
    n_vision = sum(p.numel() for p in model.vision.parameters())
    n_text = sum(p.numel() for p in model.text.parameters())
    # Approximate: 6·N per patch (vision) and per caption token (text tower), attention ignored.
    flops = 6 * samples * (n_vision * cfg.vision.n_patches + n_text * MAX_CAPTION_LEN)
    params = {"embedding": 0, "non_embedding": 0, "lm_total": 0, "vision": n_vision, "projector": 0}
    return RunOutput(tokens=samples, flops=flops, params=params, metrics=module.rows, evals=[])


# -- branch, finetune -------------------------------------------------------------------------
def _vlm_for(ctx: Context, lm: LMConfig, vision: VisionConfig, projector: ProjectorConfig,
             encoder_id: str | None) -> VLM:
    model = VLM(lm, vision, projector)
    n_patches = getattr(model.vision, "n_patches", vision.n_patches)
    if n_patches != vision.n_patches:
        raise ValueError(f"vision.hf_path {vision.hf_path} gives {n_patches} patches, but "
                         f"image_size/patch_size give {vision.n_patches}")
    if encoder_id is not None:
        weights = sf.step_paths(ctx.root, "encoder", encoder_id).weights
        model.vision.load_state_dict(ck.load_torch(weights)["model"])
    return model


def _load_lm_from(model: VLM, state: dict, source: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if k.startswith("lm.")] + list(unexpected)
    if bad:
        raise ValueError(f"{source}: weights do not fit the model (e.g. {bad[:3]})")


def run_branch(ctx: Context) -> RunOutput:
    cfg, step = ctx.step.config, ctx.step
    trunk_id = step.parent("trunk")
    tcfg, _ = load_step_config(ctx.root, "trunk", trunk_id)
    tok = ctx.data.get_tokenizer(tcfg.data)
    batch, seq = cfg.train.batch_size, cfg.train.image_stage_seq_len
    total = steps_for(cfg.tokens, batch, seq)
    t_batch, t_seq = tcfg.train.batch_size, tcfg.train.seq_len
    f_step = fraction_step(cfg.intro_fraction, tcfg.tokens, t_batch * t_seq)
    trunk_sched = trunk_schedule(tcfg.train, steps_for(tcfg.tokens, t_batch, t_seq))
    schedule = branch_schedule(cfg.schedule, cfg.train, total, trunk_sched, f_step)
    ck.seed_everything(cfg.seed)
    encoder_id = dict(step.parents).get("encoder")
    model = _vlm_for(ctx, tcfg.lm, cfg.vision, cfg.projector, encoder_id)
    n_image = cfg.projector.image_tokens(cfg.vision.n_patches)
    module = BranchModule(model, schedule, optim=_optim(cfg.train), tokens_per_step=batch * seq,
                          image_id=tok.image_id, loss_on_image_positions=cfg.loss_on_image_positions,
                          z_loss=cfg.train.z_loss)
    stream = ctx.data.mixed_stream(
        tcfg.data, cfg.image_data, cfg.instruction_data, tok, batch_size=batch, seq_len=seq,
        image_ratio=cfg.image_ratio, instruction_share=cfg.instruction_share,
        image_size=cfg.vision.image_size, image_tokens=n_image, seed=cfg.seed,
        on_bad_record=cfg.on_bad_record)
    module.data_state = stream.state_dict()
    payload = _resume_payload(ctx)
    if payload is not None:
        _restore(module, stream, payload)
    else:
        _start_from_trunk(ctx, module, trunk_id, cfg.intro_fraction)
    _train(ctx, module, stream, total, split=_splitter(stream, ctx.options, tok.image_id, n_image))
    _save_weights(ctx, module)
    tokens = total * batch * seq
    return RunOutput(tokens=tokens, flops=train_flops(tcfg.lm, tokens, seq),
                     params=model.param_counts(), metrics=module.rows, evals=[])


def _start_from_trunk(ctx: Context, module: StageModule, trunk_id: str, fraction: float) -> None:
    path = sf.step_paths(ctx.root, "trunk", trunk_id).fraction(fraction)
    if not path.exists():
        raise FileNotFoundError(f"{path}: trunk {trunk_id} has no checkpoint at intro_fraction "
                                f"{fraction}; re-run the trunk with it in checkpoint_fractions")
    payload = ck.load_torch(path)
    _load_lm_from(module.model, payload["model"], path)
    if fraction > 0:  # f = 0 starts from the initial weights with a fresh optimizer
        module.resume = {"optimizer_prefix": payload["optimizer"]}


def run_finetune(ctx: Context) -> RunOutput:
    cfg, step = ctx.step.config, ctx.step
    branch_id = step.parent("branch")
    bcfg, bparents = load_step_config(ctx.root, "branch", branch_id)
    tcfg, _ = load_step_config(ctx.root, "trunk", dict(bparents)["trunk"])
    tok = ctx.data.get_tokenizer(tcfg.data)
    seq = bcfg.train.image_stage_seq_len
    ck.seed_everything(cfg.seed)
    model = _vlm_for(ctx, tcfg.lm, bcfg.vision, bcfg.projector, None)
    n_image = bcfg.projector.image_tokens(bcfg.vision.n_patches)
    source = sf.step_paths(ctx.root, "branch", branch_id).weights
    _load_lm_from(model, ck.load_torch(source)["model"], source)
    stream = ctx.data.finetune_epochs(
        cfg.data, tok, batch_size=cfg.batch_size, seq_len=seq, image_size=bcfg.vision.image_size,
        image_tokens=n_image, epochs=cfg.epochs, seed=cfg.seed,
        max_samples=cfg.max_samples, replay_source=cfg.replay_data, replay_share=cfg.text_replay)
    total = len(stream)
    rows = cfg.batch_size + replay_rows(cfg.batch_size, cfg.text_replay)
    module = FinetuneModule(model, finetune_schedule(cfg.lr, total), optim=_optim(bcfg.train),
                            tokens_per_step=rows * seq, image_id=tok.image_id)
    module.data_state = stream.state_dict()
    payload = _resume_payload(ctx)
    if payload is not None:
        _restore(module, stream, payload)
    _train(ctx, module, stream, total, split=_splitter(stream, ctx.options, tok.image_id, n_image))
    _save_weights(ctx, module)
    tokens = total * rows * seq
    return RunOutput(tokens=tokens, flops=train_flops(tcfg.lm, tokens, seq),
                     params=model.param_counts(), metrics=module.rows, evals=[])


RUNNERS: dict[str, Callable[[Context], RunOutput]] = {
    "encoder": run_encoder, "trunk": run_trunk, "branch": run_branch,
    "finetune": run_finetune, "eval": run_eval}
