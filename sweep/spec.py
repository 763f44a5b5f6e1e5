"""Study files (TOML) parsed into frozen, validated dataclasses.

A study names its axes (each a list), its data sources, fixed training/eval settings and backend
settings, plus optional `[[exclude]]` / `[[include]]` rules that cut or extend the full product of
the axes. `load_study(path)` either returns a `Study` or raises one `StudyError` naming the file,
the key path and the bad value. See studies/demo.toml for a commented example.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from models.config import ProjectorConfig, TrainDefaults, VisionConfig
from models.data import files
from models.data.evaltasks import GROUPS
from models.data.world.entities import DEFAULT_KINDS, MAX_KINDS, MIN_KINDS, world_identity
from models.metrics import FAMILIES
from models.presets import PRESETS
from models.stepfiles import round_fraction
from models.steps import DataSource
from models.trackers import TrackingConfig
from sweep.backendsettings import BackendSettings, check_rank_split, read_backend
from sweep.errors import StudyError
from sweep.reader import REQUIRED, Table, check_float, check_int, check_str
from sweep.settings import (
    EncoderSettings,
    EvalSettings,
    FinetuneSettings,
    TrainSettings,
    read_encoder,
    read_eval,
    read_finetune,
    read_train,
)
from sweep.trackingsettings import read_logging

AXES = ("scale", "text_data", "image_data", "intro_fraction", "image_ratio", "instruction_share",
        "finetune_epochs", "seed", "schedule")
SCHEDULES = ("paper", "continue", "rewarm")
TEXT_KINDS = ("world", "jsonl", "parquet", "tokens")
IMAGE_KINDS = ("world", "webdataset", "parquet_images")
FINETUNE_KINDS = ("world", "llava")
EVAL_KINDS = ("world", "vqa_jsonl", "mc_jsonl")
SOURCE_KINDS = tuple(dict.fromkeys(TEXT_KINDS + IMAGE_KINDS + FINETUNE_KINDS + EVAL_KINDS))
SHARD_KINDS = ("jsonl", "parquet", "webdataset", "parquet_images", "llava")  # may be remote
PATH_OPTIONS = ("tokenizer", "image_root", "heldout", "fewshot")  # relative to the study file
# Options each kind of source accepts besides `kind` and `paths`.
SOURCE_OPTIONS: dict[str, dict[str, type]] = {
    "world": {"seed": int, "image_size": int, "n_kinds": int},
    # `heldout`: a path or glob of held-out shards, the fixed set every eval's validation loss uses
    # `endpoint_url`: the object store's address for s3:// paths (an S3-compatible server)
    "jsonl": {"tokenizer": str, "text_field": str, "heldout": str, "endpoint_url": str},
    "parquet": {"tokenizer": str, "text_field": str, "heldout": str, "endpoint_url": str},
    # pre-tokenised text: the folder `vlmsweep tokenize` wrote; tokenizer and held-out set are its origin's
    "tokens": {},
    # image-caption sources take a `tokenizer` for the captions when the small ViT is pre-trained on them
    # `image_ext`: the image member (`jpg`, or alternatives `jpg;png`); `caption_field`: the caption
    # is this field of KEY.json (default: KEY.txt, else the JSON's `caption`)
    # `resize`: where images get their one resize to the encoder's size, "cpu" (data workers, PIL
    # bicubic) or "device" (after the uint8 copy; models.vision.pixels): other pixels, other step ids
    "webdataset": {"image_ext": str, "caption_field": str, "tokenizer": str, "heldout": str,
                   "endpoint_url": str, "resize": str},
    "parquet_images": {"image_field": str, "caption_field": str, "tokenizer": str, "heldout": str,
                       "endpoint_url": str, "resize": str},
    # `image_root`: the folder images lie in (LLaVA: its paths are relative to it); a record's image
    # outside it is refused unless `allow_outside_root = true`
    "llava": {"image_root": str, "allow_outside_root": bool, "endpoint_url": str, "resize": str},
    # `chance`: the task's floor when a blind answer beats a uniform guess (stable score = acc. − it);
    # `group`: vl | text (default: vl when the records have images); `metric`: how records are scored
    "vqa_jsonl": {"task": str, "chance": float, "group": str, "metric": str, "image_root": str,
                  "allow_outside_root": bool},
    "mc_jsonl": {"task": str, "chance": float, "group": str, "metric": str, "image_root": str,
                 "allow_outside_root": bool,
                 # a folder of training splits, `<task>.jsonl` each, to draw few-shot examples from
                 "fewshot": str},
}
OPTION_CHOICES: dict[str, tuple[str, ...]] = {"group": GROUPS, "metric": tuple(FAMILIES),
                                              "resize": ("cpu", "device")}


@dataclass(frozen=True, kw_only=True, slots=True)
class Cell:
    """One point of the study grid: a value on every axis."""

    scale: str
    text_data: str
    image_data: str
    intro_fraction: float
    image_ratio: float
    instruction_share: float
    finetune_epochs: int
    seed: int
    schedule: str

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    """An exclude/include rule: axis name → the values it matches."""

    where: tuple[tuple[str, tuple[Any, ...]], ...]
    key: str  # its key path in the study file, for messages

    def matches(self, cell: Cell) -> bool:
        return all(getattr(cell, axis) in values for axis, values in self.where)


@dataclass(frozen=True, kw_only=True, slots=True)
class Study:
    name: str
    path: Path  # the study file (absolute)
    root: Path  # output root (absolute; relative values resolve against the study file's folder)
    description: str
    axes: dict[str, tuple[Any, ...]]
    exclude: tuple[Rule, ...]
    include: tuple[Rule, ...]
    data: dict[str, DataSource]
    vision: ModelOverride | None  # fields replacing every scale's vision config
    projector: ModelOverride | None  # fields replacing every scale's projector config
    train: TrainSettings
    encoder: EncoderSettings
    finetune: FinetuneSettings
    eval: EvalSettings
    backend: BackendSettings
    cells: tuple[Cell, ...] = field(default=())
    logging: TrackingConfig | None = None  # [logging]: experiment trackers (no step id holds it)

    def train_defaults(self, scale: str) -> TrainDefaults:
        """The preset's optimisation defaults with the study's overrides applied."""
        return self.train.apply(scale, PRESETS[scale].train)

    def vision_config(self, scale: str) -> VisionConfig:
        base = PRESETS[scale].model.vision
        return self.vision.apply(base) if self.vision else base

    def projector_config(self, scale: str) -> ProjectorConfig:
        base = PRESETS[scale].model.projector
        if self.projector is None:
            return base
        projector = self.projector.apply(base)
        vision = self.vision_config(scale)
        if vision.kind != "hf":  # an hf encoder's grid is known only once it is loaded
            try:
                projector.image_tokens(vision.n_patches)
            except ValueError as exc:
                raise StudyError(self.projector.file, f"{self.projector.key}.pixel_shuffle",
                                 f"{exc} (scale {scale})") from None
        return projector


def load_study(path: str | Path) -> Study:
    """Parse and validate a study file; raises StudyError (exit 2 at the CLI) on any problem."""
    path = Path(path).resolve()
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(file, "<file>", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(file, "<file>", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(file, "<toml>", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise StudyError(file, "<toml>", "not valid TOML: nested too deeply") from None
    top = Table(raw, file, "")
    head = top.table("study", required=True)
    name = head.str("name")
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise head.error("name", f"{name!r} must be non-empty and use only letters, digits, - _ .")
    root_value = head.str("root", f"runs/{name}")
    description = head.str("description", "")
    head.finish()
    data = _read_data(top.table("data"), path.parent)
    axes = _read_axes(top.table("axes", required=True), data)
    vision, projector = _read_model(top.table("model"), path.parent)
    train = read_train(top.table("train"), axes["scale"], data)
    encoder = read_encoder(top.table("encoder"), data)
    finetune = read_finetune(top.table("finetune"), data)
    evaluation = read_eval(top.table("eval"), data)
    backend = read_backend(top.table("backend"), tuple(axes["scale"]))
    exclude = tuple(_read_rule(t, data) for t in top.tables("exclude"))
    include = tuple(_read_rule(t, data) for t in top.tables("include"))
    root = (path.parent / root_value).resolve()
    tracking = read_logging(top.table("logging"), name, root, path.parent)
    top.finish()
    study = Study(name=name, path=path, root=root,
                  description=description, axes=axes, exclude=exclude, include=include, data=data,
                  vision=vision, projector=projector, train=train, encoder=encoder,
                  finetune=finetune, eval=evaluation, backend=backend, logging=tracking)
    study = replace(study, cells=expand_cells(study))
    _check_one_world(study)
    check_rank_split(study)
    return study


def shift_seeds(study: Study, offset: int) -> Study:
    """The same study with every training seed moved by `offset`: the seed axis and the seeds its
    rules name, the shared trunk's seed (`[train].trunk_seed`) and the encoder's. A replication:
    another machine's float order trains another seed, so findings that hold only for these seeds
    would not hold there either. The data (the built-in world's seed included) stays the same. The
    study is renamed `<name>-seed-offset-<K>`, so both runs can share one results root (each its own
    manifest and findings) without one overwriting the other's list of steps."""
    if offset == 0:
        return study
    if offset < 0:
        raise StudyError(str(study.path), "seed", f"a seed offset must be ≥ 0 (got {offset})")

    def rules(rs: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return tuple(Rule(where=tuple((a, tuple(v + offset for v in vs) if a == "seed" else vs)
                                      for a, vs in r.where), key=r.key) for r in rs)

    trunk_seed = study.train.trunk_seed
    shifted = replace(study, name=f"{study.name}-seed-offset-{offset}",
                      axes=study.axes | {"seed": tuple(s + offset for s in study.axes["seed"])},
                      exclude=rules(study.exclude), include=rules(study.include),
                      train=replace(study.train, trunk_seed=None if trunk_seed is None else trunk_seed + offset),
                      encoder=replace(study.encoder, seed=study.encoder.seed + offset))
    return replace(shifted, cells=expand_cells(shifted))


def _check_one_world(study: Study) -> None:
    """A study whose cells train on one built-in world must encode, fine-tune and evaluate on that
    world too: another seed or kind count is another world (other kinds, other facts)."""
    data, cells = study.data, study.cells
    trained = {name for c in cells for name in (c.text_data, c.image_data) if data[name].kind == "world"}
    worlds = {world_identity(data[name]) for name in trained}
    if len(worlds) != 1:
        return
    uses = {"finetune.data": study.finetune.data}
    uses |= {f"eval.data[{i}]" if len(study.eval.data) > 1 else "eval.data": name
             for i, name in enumerate(study.eval.data)}
    if any(study.vision_config(c.scale).needs_encoder_step for c in cells):
        uses["encoder.data"] = study.encoder.data
    if any(c.instruction_share > 0 for c in cells):
        uses["train.instruction_data"] = study.train.instruction_data
    (seed, kinds), name = worlds.pop(), sorted(trained)[0]
    for key, other in uses.items():
        source = data[other]
        if source.kind == "world" and world_identity(source) != (seed, kinds):
            other_seed, other_kinds = world_identity(source)
            raise StudyError(str(study.path), key,
                             f"data source {other!r} is the built-in world with seed {other_seed} "
                             f"and {other_kinds} kinds, but the study trains on {name!r} (seed "
                             f"{seed}, {kinds} kinds); set {key.split('.')[-1]} = {name!r} or "
                             f"redefine [data.{other}]")


def expand_cells(study: Study) -> tuple[Cell, ...]:
    """The product of the axes, minus excluded cells, plus included ones; rules must match."""
    base = [Cell(**dict(zip(AXES, values)))
            for values in itertools.product(*(study.axes[a] for a in AXES))]
    file = str(study.path)
    for rule in study.exclude:
        if not any(rule.matches(c) for c in base):
            raise StudyError(file, rule.key, "matches no cell of the grid (an exclude rule that "
                                             "removes nothing is almost always a typo)")
    kept = [c for c in base if not any(rule.matches(c) for rule in study.exclude)]
    seen = set(kept)
    for rule in study.include:
        given = dict(rule.where)
        pools = [given.get(a, study.axes[a]) for a in AXES]
        added = [c for c in (Cell(**dict(zip(AXES, v))) for v in itertools.product(*pools))
                 if c not in seen]
        if not added:
            raise StudyError(file, rule.key, "adds no cell that is not already in the grid")
        kept.extend(added)
        seen.update(added)
    if not kept:
        raise StudyError(file, "exclude", "the exclude rules remove every cell of the grid")
    return tuple(kept)


def _axis_checker(axis: str, data: dict[str, DataSource], table_error):
    """A function (value, key) -> checked value for one axis."""
    def check(value: Any, key: str) -> Any:
        if axis == "scale":
            name = check_str(value, table_error, key)
            if name not in PRESETS:
                raise table_error(key, f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
            return name
        if axis in ("text_data", "image_data"):
            name = check_str(value, table_error, key)
            if name not in data:
                raise table_error(key, f"unknown data source {name!r}; declared sources: "
                                       f"{', '.join(data)} (declare others under [data.NAME])")
            allowed = TEXT_KINDS if axis == "text_data" else IMAGE_KINDS
            if data[name].kind not in allowed:
                raise table_error(key, f"data source {name!r} is of kind {data[name].kind!r}, "
                                       f"which cannot serve as {axis} (allowed: {', '.join(allowed)})")
            return name
        if axis in ("intro_fraction", "image_ratio", "instruction_share"):
            return round_fraction(check_float(value, table_error, key, 0.0, 1.0))
        if axis == "finetune_epochs":
            return check_int(value, table_error, key, lo=0)
        if axis == "seed":
            return check_int(value, table_error, key, lo=0)
        return check_str(value, table_error, key, SCHEDULES)
    return check


def _read_axes(table: Table, data: dict[str, DataSource]) -> dict[str, tuple[Any, ...]]:
    axes: dict[str, tuple[Any, ...]] = {}
    defaults = {"text_data": ["world"], "image_data": ["world"], "instruction_share": [0.0],
                "finetune_epochs": [1], "seed": [0], "schedule": ["paper"]}
    for axis in AXES:
        values = table.list(axis, _axis_checker(axis, data, table.error), defaults.get(axis, REQUIRED))
        if len(set(values)) != len(values):
            raise table.error(axis, f"lists a value twice: {values!r}")
        if axis == "image_ratio" and 0.0 in values:
            raise table.error(axis, "0 means no image data at all; use a positive ratio "
                                    "(the text-only model is the trunk, evaluated on its own)")
        axes[axis] = tuple(values)
    table.finish()
    return axes


def _read_rule(table: Table, data: dict[str, DataSource]) -> Rule:
    where = []
    for axis in AXES:
        if table.has(axis):
            values = table.list(axis, _axis_checker(axis, data, table.error))
            where.append((axis, tuple(values)))
    table.finish()
    if not where:
        raise StudyError(table.file, table.path, f"a rule needs at least one axis ({', '.join(AXES)})")
    return Rule(where=tuple(where), key=table.path)


def _read_data(table: Table, base: Path) -> dict[str, DataSource]:
    sources = {"world": DataSource(name="world", kind="world", options=(("seed", 0),))}
    for name in list(table.data):
        t = table.table(name, required=True)
        kind = t.str("kind", choices=SOURCE_KINDS)
        options = []
        for key, typ in SOURCE_OPTIONS[kind].items():
            if t.has(key):
                value = (t.int(key, lo=0) if typ is int else t.float(key, lo=0.0, hi=1.0)
                         if typ is float else t.bool(key) if typ is bool
                         else t.str(key, choices=OPTION_CHOICES.get(key)))
                if key in PATH_OPTIONS:
                    value = _path(t, key, value, base, remote=kind in SHARD_KINDS and key != "tokenizer")
                elif key == "endpoint_url" and files.scheme(value) not in ("http", "https"):
                    raise t.error(key, f"{value!r} is not an http:// or https:// address")
                elif key == "image_ext" and not re.fullmatch(r"\w+(\.\w+)*(;\w+(\.\w+)*)*", value.lower()):
                    raise t.error(key, f"{value!r} is not a member extension such as 'jpg' or 'jpg;png'")
                options.append((key, value))
        if kind == "world":
            t.raw("paths", [])  # allowed but meaningless; refuse a non-empty one
            if t.data.get("paths"):
                raise t.error("paths", "the built-in world has no shard paths")
            n_kinds = dict(options).get("n_kinds", DEFAULT_KINDS)
            if not MIN_KINDS <= n_kinds <= MAX_KINDS:
                raise t.error("n_kinds", f"the built-in world has {MIN_KINDS} to {MAX_KINDS} kinds, "
                                         f"got {n_kinds}")
            options = options if any(k == "seed" for k, _ in options) else [("seed", 0)] + options
            paths: tuple[str, ...] = ()
        else:
            items = t.list("paths", lambda v, k, t=t: check_str(v, t.error, k))
            paths = tuple(_path(t, "paths", p, base, remote=kind in SHARD_KINDS) for p in items)
        t.finish()
        sources[name] = DataSource(name=name, kind=kind, paths=paths, options=tuple(sorted(options)))
    table.finish()
    return sources


def _path(t: Table, key: str, value: str, base: Path, *, remote: bool) -> str:
    """A path option or shard pattern: relative to the study file, or a remote URL a shard source
    may name (`models.data.files`: its scheme known, its extra installed)."""
    if not files.is_remote(value):
        return str((base / value).resolve())
    if not remote:
        raise t.error(key, f"{value!r}: this path is read from local disk; copy the file here")
    problem = files.path_problem(value)
    if problem:
        raise t.error(key, problem)
    return value


def _read_model(table: Table, base: Path) -> tuple["ModelOverride | None", "ModelOverride | None"]:
    """`[model.vision]` / `[model.projector]`: fields replacing every scale's preset values."""
    out: list[ModelOverride | None] = []
    for section, cls in (("vision", VisionConfig), ("projector", ProjectorConfig)):
        if not table.has(section):
            out.append(None)
            continue
        t = table.table(section)
        values = []
        for f in fields(cls):
            if t.has(f.name):
                values.append((f.name, _typed(t, f.name, type(f.default), base)))
        t.finish()
        out.append(ModelOverride(values=tuple(values), file=t.file, key=t.path))
    table.finish()
    return out[0], out[1]


def _typed(t: Table, name: str, typ: type, base: Path) -> Any:
    if typ is bool:
        return t.bool(name)
    if typ is int:
        return t.int(name, lo=0)
    if typ is float:
        return t.float(name, lo=0.0)
    value = t.str(name)
    return str((base / value).resolve()) if name == "hf_path" else value


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelOverride:
    """Field overrides for a model sub-config, checked against every scale when applied."""

    values: tuple[tuple[str, Any], ...]
    file: str
    key: str

    def apply(self, base: Any) -> Any:
        try:
            return replace(base, **dict(self.values))
        except (ValueError, TypeError) as exc:
            raise StudyError(self.file, self.key, str(exc)) from None
