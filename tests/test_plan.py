"""The planner: step identity (same-id / different-id pairs), trunk sharing, presets and studies."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.accounting import param_counts
from models.config import RunOptions
from models.presets import PRESETS
from models.steps import DataSource, Step
from sweep.plan import plan_study, sharing_savings, step_cost
from sweep.spec import load_study

REPO = Path(__file__).resolve().parents[1]
STUDIES = sorted((REPO / "studies").glob("*.toml"))

SMALL = """
[study]
name = "small"
[axes]
scale = ["debug"]
intro_fraction = [0.5, 0.8, 1.0]
image_ratio = [0.1]
"""


def _study(tmp_path: Path, text: str = SMALL, name: str = "s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_study(path)


def _one_of_each_kind(tmp_path) -> dict[str, Step]:
    plan = plan_study(_study(tmp_path, SMALL.replace("[0.1]", "[0.1]\ninstruction_share = [0.2]")))
    out: dict[str, Step] = {}
    for s in plan.steps:
        out.setdefault(s.kind if s.kind != "eval" else f"eval-{s.parents[0][0]}", s)
    return out


# Alternatives for string fields whose values are an enumeration.
_CHOICES = [("vit", "patch", "hf"), ("mlp2", "linear"), ("continue", "rewarm"), ("error", "skip"),
            ("rmsnorm", "layernorm"),
            ("world", "jsonl", "webdataset", "llava")]


def _alternatives(value):
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):  # doubling keeps divisibility constraints (width % heads) valid
        return [v for v in (value * 2, value + 1) if v != value]
    if isinstance(value, float):
        return [value / 2 + 0.01, value / 2 + 1e-5]  # the second for a floor below the LR
    if isinstance(value, str):
        for group in _CHOICES:
            if value in group:
                return [v for v in group if v != value]
        return [value + "-x", "x"]
    if isinstance(value, tuple):
        return [value + (value[-1],) if value else ("x",), ()] if value != () else [("x",)]
    if value is None:
        return [0.5]
    return []


def _leaves(obj, prefix=()):
    """(path, value) of every field of a (nested) dataclass config, labels included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, prefix + (f.name,))
        else:
            yield prefix + (f.name,), value, f.metadata.get("identity", True)


def _replace_path(obj, path, value):
    head, *rest = path
    inner = _replace_path(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: inner})


def _perturbed(step: Step, path, value):
    for alt in _alternatives(value):
        try:
            config = _replace_path(step.config, path, alt)
        except (ValueError, TypeError):
            continue  # e.g. a vision kind that needs other fields; try the next alternative
        return dataclasses.replace(step, config=config)
    if path[-1] == "kind" and path[:-1] and path[-2] == "vision":  # a patch projection is trainable
        vision = dataclasses.replace(step.config.vision, kind="patch", frozen=False)
        return dataclasses.replace(step, config=dataclasses.replace(step.config, vision=vision))
    return None


@pytest.mark.parametrize("kind", ["encoder", "trunk", "branch", "finetune", "eval-finetune",
                                  "eval-branch", "eval-trunk"])
def test_every_identity_field_changes_the_id_and_labels_do_not(tmp_path, kind):
    step = _one_of_each_kind(tmp_path)[kind]
    tested = 0
    for path, value, is_identity in _leaves(step.config):
        other = _perturbed(step, path, value)
        if other is None:
            continue
        tested += 1
        if is_identity:
            assert other.step_id != step.step_id, f"{kind}: changing {'.'.join(path)} kept the id"
        else:
            assert other.step_id == step.step_id, f"{kind}: label {'.'.join(path)} changed the id"
    assert tested == len(list(_leaves(step.config)))  # every field was exercised
    # parents change the id; meta (labels, checkpoint fractions) does not
    assert dataclasses.replace(step, parents=step.parents + (("x", "0" * 12),)).step_id != step.step_id
    assert dataclasses.replace(step, meta={"label": "other"}).step_id == step.step_id


def test_data_source_name_is_a_label(tmp_path):
    a = DataSource(name="a", kind="world", options=(("seed", 0),))
    b = dataclasses.replace(a, name="b")
    trunk = _one_of_each_kind(tmp_path)["trunk"]
    assert (dataclasses.replace(trunk, config=dataclasses.replace(trunk.config, data=a)).step_id
            == dataclasses.replace(trunk, config=dataclasses.replace(trunk.config, data=b)).step_id)


def test_ids_do_not_depend_on_root_labels_or_backend(tmp_path):
    base = plan_study(_study(tmp_path))
    relabelled = SMALL.replace('name = "small"', 'name = "other"\nroot = "elsewhere"\n'
                               'description = "x"') + "\n[backend]\nworkers = 7\ndefault = \"inline\"\n"
    other = plan_study(_study(tmp_path, relabelled, "t.toml"), root=tmp_path / "r2")
    assert [s.step_id for s in base.steps] == [s.step_id for s in other.steps]


def test_micro_batch_and_compile_reach_the_training_steps_not_their_ids(tmp_path):
    base = plan_study(_study(tmp_path))
    text = SMALL.replace('scale = ["debug"]', 'scale = ["debug", "1m"]')
    run = plan_study(_study(tmp_path, text + '\n[backend]\ncompile = true\n[backend.micro_batch]\ndebug = 2\n',
                            "t.toml"))
    assert {s.step_id for s in base.steps} <= {s.step_id for s in run.steps}
    for step in run.steps:
        scale = step.meta.get("scale")
        if step.kind in ("trunk", "branch", "finetune"):
            assert step.meta["run"] == {"micro_batch": 2 if scale == "debug" else 0, "compile": True}
        else:
            assert "run" not in step.meta
    assert all("run" not in s.meta for s in base.steps)  # defaults leave meta (and plan.json) as it was


def test_data_workers_reach_the_training_steps_not_their_ids(tmp_path):
    base = plan_study(_study(tmp_path))
    for workers in (0, 3):
        run = plan_study(_study(tmp_path, SMALL + f"\n[backend]\ndata_workers = {workers}\n", "t.toml"))
        assert [s.step_id for s in base.steps] == [s.step_id for s in run.steps]
        for step in run.steps:
            if step.kind in ("trunk", "branch", "finetune"):
                assert step.meta["run"]["data_workers"] == workers
                assert RunOptions(**step.meta["run"]).data_workers == workers


def test_a_result_changing_setting_changes_ids(tmp_path):
    base = {s.kind: s.step_id for s in plan_study(_study(tmp_path)).steps}
    more = {s.kind: s.step_id for s in plan_study(_study(
        tmp_path, SMALL + "\n[train]\ntrunk_tokens_per_param = 10.0\n", "t.toml")).steps}
    assert base["trunk"] != more["trunk"] and base["branch"] != more["branch"]
    assert base["encoder"] == more["encoder"]  # the encoder does not depend on the trunk


def test_trunk_sharing_arithmetic_matches_a_hand_computation(tmp_path):
    plan = plan_study(_study(tmp_path))
    kinds = [s.kind for s in plan.steps]
    # one trunk and one encoder for three branches; each branch: one finetune, two evals; + trunk evals
    assert kinds.count("trunk") == 1 and kinds.count("encoder") == 1
    assert kinds.count("branch") == 3 and kinds.count("finetune") == 3
    assert kinds.count("eval") == 3 + 3 + 3
    n = 46_176  # debug preset: 512·32·2 embedding + 13,408 non-embedding (checked below)
    assert param_counts(PRESETS["debug"].model)["lm_total"] == n
    trunk = 20 * n  # 923,520 tokens
    branch = 20 * n
    encoder = 20_000 * 16  # samples × image tokens (32 px images in 8 px patches)
    finetune = 2_000 * 1 * 32  # samples × epochs × sequence length
    shared = encoder + trunk + 3 * branch + 3 * finetune
    # Unshared, each branch trains its own prefix and the text-only baseline (the trunk, evaluated
    # at checkpoint 1.0) still trains its T: every prefix is saved.
    saved = (0.5 + 0.8 + 1.0) * trunk
    savings = sharing_savings(plan)
    assert savings["tokens_shared"] == shared == 4_206_080
    assert savings["tokens_saved"] == round(saved) == 2_124_096
    assert savings["tokens_unshared"] == shared + 2_124_096
    assert savings["saved_percent"] == pytest.approx(100 * 2_124_096 / (shared + 2_124_096))


@pytest.mark.parametrize("fractions", ["[0.5]", "[0.2, 0.4]"])
def test_plan_never_prints_a_negative_saving(tmp_path, capsys, fractions):
    study = tmp_path / "early.toml"
    study.write_text('[study]\nname = "early"\n[axes]\nscale = ["debug"]\n'
                     f"intro_fraction = {fractions}\nimage_ratio = [0.1]\n")
    plan = plan_study(load_study(study))
    trunk = next(s for s in plan.steps if s.kind == "trunk").config.tokens
    used = max(s.config.intro_fraction for s in plan.steps if s.kind == "branch")
    assert sharing_savings(plan)["tokens_saved"] == round(sum(
        s.config.intro_fraction for s in plan.steps if s.kind == "branch") * trunk - trunk)
    from sweep.cli import main
    assert main(["plan", str(study)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("sharing trunks"))
    assert "-" not in line and "saves nothing here" in line, line
    assert used < 1.0


def test_trunk_checkpoints_every_fraction_its_branches_use(tmp_path):
    plan = plan_study(_study(tmp_path))
    (trunk,) = [s for s in plan.steps if s.kind == "trunk"]
    assert trunk.meta["checkpoint_fractions"] == [0.5, 0.8, 1.0]
    policies = {s.config.intro_fraction: s.config.schedule for s in plan.steps if s.kind == "branch"}
    assert policies == {0.5: "continue", 0.8: "continue", 1.0: "rewarm"}


def test_levels_put_parents_first(tmp_path):
    plan = plan_study(_study(tmp_path))
    seen: set[str] = set()
    for level in plan.levels():
        for s in level:
            assert all(p in seen for _, p in s.parents)
        seen.update(s.step_id for s in level)
    assert len(seen) == len(plan.steps)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_plans_and_reports_its_parameters(tmp_path, name):
    counts = PRESETS[name].params
    assert counts["lm_total"] == counts["embedding"] + counts["non_embedding"] > 0
    assert counts["vision"] and counts["projector"]
    plan = plan_study(_study(tmp_path, SMALL.replace('"debug"', f'"{name}"')))
    assert all(step_cost(s).tokens is not None for s in plan.steps)


def test_paper_scales_match_their_names():
    for name, expected in (("79m", 79e6), ("154m", 154e6), ("411m", 411e6), ("1.4b", 1.4e9)):
        assert PRESETS[name].params["lm_total"] == pytest.approx(expected, rel=0.03)
    lm = PRESETS["1.4b"].model.lm
    assert (lm.n_layers, lm.n_heads, lm.d_model) == (24, 16, 2048)
    assert (PRESETS["79m"].model.lm.n_layers, PRESETS["79m"].model.lm.d_model) == (8, 512)
    assert (PRESETS["79m"].train.lr, PRESETS["79m"].train.warmup_steps) == (3e-3, 400)
    assert (PRESETS["1.4b"].train.lr, PRESETS["1.4b"].train.warmup_steps) == (1e-2, 5000)


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_every_example_study_validates_and_plans(path):
    plan = plan_study(load_study(path))
    assert len(plan.steps) > 10 and len(plan.levels()) == 4
    assert sharing_savings(plan)["tokens_saved"] > 0


def _plan_json(cwd: Path, study: Path, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "sweep.cli", "plan", str(study), "--json",
                          "--root", str(root)], cwd=cwd, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "random"})
    return json.loads(out.stdout)


def test_plan_json_is_identical_across_processes_and_roots(tmp_path):
    study = REPO / "studies" / "demo.toml"
    a = _plan_json(REPO, study, tmp_path / "a")
    b = _plan_json(tmp_path, study, tmp_path / "b")
    assert a == b
    assert {"step_id", "kind", "parents", "config", "tokens", "flops", "status"} <= set(a["steps"][0])
    assert all(s["status"] == "missing" for s in a["steps"])


def test_a_seed_offset_replicates_the_demo_with_every_training_seed_moved():
    """`vlmsweep demo --seed-offset K`: the same cells with seeds + K, no step shared with the
    original (trunk, encoder, branches, fine-tunes, evals all retrain), the world unchanged."""
    from sweep.spec import shift_seeds

    study = load_study(REPO / "studies" / "demo.toml")
    again = shift_seeds(study, 10)
    assert shift_seeds(study, 0) is study
    assert sorted((c.scale, c.intro_fraction, c.image_ratio, c.finetune_epochs, c.instruction_share,
                   c.seed + 10) for c in study.cells) == \
        sorted((c.scale, c.intro_fraction, c.image_ratio, c.finetune_epochs, c.instruction_share, c.seed)
               for c in again.cells)
    assert again.train.trunk_seed == study.train.trunk_seed + 10
    assert again.encoder.seed == study.encoder.seed + 10
    assert again.data == study.data and again.name == "demo-seed-offset-10"
    one, two = plan_study(study), plan_study(again)
    assert [s.kind for s in one.steps] == [s.kind for s in two.steps]
    assert not {s.step_id for s in one.steps} & {s.step_id for s in two.steps}
    for kind in ("encoder", "trunk", "branch", "finetune", "eval"):
        before = {s.config.seed for s in one.steps if s.kind == kind}
        after = {s.config.seed for s in two.steps if s.kind == kind}
        assert after == {seed + 10 for seed in before}, kind


def test_a_processing_revision_renews_the_ids_of_steps_that_read_image_files_or_use_an_hf_encoder():
    from models.config import VisionConfig
    from models.steps import DECODE_REVISION, HF_PIXELS_REVISION, identity

    world = DataSource(name="w", kind="world", options=(("seed", 0),))
    shards = DataSource(name="s", kind="webdataset", paths=("/d/{0..1}.tar",))
    assert "decode_revision" not in identity(world)  # the world's studies keep their ids
    assert identity(shards)["decode_revision"] == DECODE_REVISION
    assert "pixels_revision" not in identity(VisionConfig(kind="vit"))
    assert identity(VisionConfig(kind="hf", hf_path="/m"))["pixels_revision"] == HF_PIXELS_REVISION
