"""The materialised world as a real-format study: its tokenizer.json reproduces the world's
tokenizer, the study file `vlmsweep world` writes runs end to end with VL and text eval sources of
both kinds, and one trained model scores the same on the eval files as on the world's own tasks."""

from __future__ import annotations

import tomllib

import duckdb
import pytest

import models.data as data
from models import checkpoint as ck
from models import stepfiles as sf
from models.data.tokenizer import HFTokenizer, world_tokenizer
from models.data.world import WorldData
from models.data.world.bench import TEXT_TASKS, VL_TASKS, build_task
from models.evaluate import evaluate
from models.stages.eval_step import model_spec
from models.steps import DataSource
from models.vlm import VLM
from sweep.cli import main
from sweep.plan import plan_study
from sweep.spec import load_study

SIZES = ["--text-docs", "300", "--pairs", "200", "--instructions", "64", "--eval-items", "12", "--shards", "2"]


def test_the_worlds_tokenizer_json_reproduces_its_tokenizer_exactly(tmp_path):
    assert main(["world", "--out", str(tmp_path), "--n-kinds", "8", *SIZES]) == 0
    word, hf = world_tokenizer(), HFTokenizer(tmp_path / "tokenizer.json")
    world = WorldData.from_seed(0, 8)
    texts = [world.text(i) for i in range(200)] + ["<image> <user> Is THERE a red ball ? <assistant>",
                                                   "question : what is 3 + 4 ? answer : 7", "zorblax, x!"]
    for name in VL_TASKS + TEXT_TASKS:
        task = build_task(name, world.world, word, n=3, image_size=32, image_tokens=4, seed=0)
        texts += [t for it in task.items for t in it.choice_texts + it.answers]
    for text in texts:
        assert hf.encode(text) == word.encode(text), text
        ids = word.encode(text)
        assert hf.decode(ids) == word.decode(ids)
    assert (hf.vocab_size, hf.pad_id, hf.eos_id, hf.image_id, hf.user_id, hf.assistant_id) == \
        (word.vocab_size, word.pad_id, word.eos_id, word.image_id, word.user_id, word.assistant_id)


def test_the_written_study_has_relative_paths_and_eval_sources_of_both_kinds(tmp_path):
    out = tmp_path / "w"
    assert main(["world", "--out", str(out), *SIZES]) == 0
    raw = tomllib.loads((out / "study.toml").read_text())
    for source in raw["data"].values():
        assert all(not p.startswith("/") for p in source["paths"])
    evals = {name: raw["data"][name] for name in raw["eval"]["data"]}
    assert {(s["group"], s["kind"]) for s in evals.values()} == {
        ("vl", "vqa_jsonl"), ("vl", "mc_jsonl"), ("text", "vqa_jsonl"), ("text", "mc_jsonl")}
    moved = tmp_path / "moved"
    out.rename(moved)  # relative paths: the folder can move
    study = load_study(moved / "study.toml")
    assert all(str(moved) in p for name in study.eval.data for p in study.data[name].paths)
    assert len(plan_study(study).steps) > 0


@pytest.mark.slow
def test_the_written_study_runs_end_to_end_and_matches_the_worlds_own_tasks(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["world", "--out", str(out), "--n-kinds", "8", *SIZES]) == 0
    study_file = out / "study.toml"
    for argv in (["run", str(study_file), "--backend", "inline"], ["ingest", str(study_file)],
                 ["report", str(study_file), "--out", str(tmp_path / "report")]):
        assert main(argv) == 0, capsys.readouterr().err
    study = load_study(study_file)
    with duckdb.connect(str(study.root / "results.duckdb"), read_only=True) as con:
        groups = dict(con.execute('SELECT "group", count(DISTINCT task) FROM stable_scores GROUP BY 1').fetchall())
        metrics = {r[0] for r in con.execute("SELECT DISTINCT metric FROM evals").fetchall()}
        primaries = con.execute("SELECT count(*) FROM evals WHERE primary_metric").fetchone()[0]
        per_task = con.execute("SELECT count(*) FROM (SELECT DISTINCT step_id, task FROM evals)").fetchone()[0]
    assert groups == {"vl": len(VL_TASKS), "text": len(TEXT_TASKS)}
    assert {"acc", "acc_norm", "f1", "exact_match"} <= metrics and primaries == per_task
    assert (tmp_path / "report" / "figures" / "vl_vs_text_tradeoff.png").is_file()
    assert (tmp_path / "report" / "tables" / "text_cost.tex").is_file()
    _assert_parity(study, out)


def _assert_parity(study, out) -> None:
    """A fine-tuned model of the run scores the eval files exactly as the world's own tasks."""
    plan = plan_study(study)
    finetune = next(s for s in plan.steps if s.kind == "finetune")
    lm, vision, projector, _ = model_spec(study.root, "finetune", finetune.step_id)
    model = VLM(lm, vision, projector)
    model.load_state_dict(ck.load_torch(sf.step_paths(study.root, "finetune", finetune.step_id).weights)["model"])
    n_image = projector.image_tokens(vision.n_patches)
    kw = dict(n_per_task=0, image_size=vision.image_size, seed=0, image_tokens=n_image)
    world = data.eval_tasks(DataSource(name="world", kind="world", options=(("n_kinds", 8), ("seed", 0))),
                            world_tokenizer(), **kw | {"n_per_task": 12})
    hf = HFTokenizer(out / "tokenizer.json")
    files = [t for name in study.eval.data for t in data.eval_tasks(study.data[name], hf, **kw)]
    assert sorted(t.name for t in files) == sorted(t.name for t in world)
    score = dict(image_id=hf.image_id, image_tokens=n_image, eos_id=hf.eos_id, decode=hf.decode,
                 stop_ids=(hf.user_id,))
    by_task = lambda rows: {(r["task"], r["metric"]): (r["value"], r["chance"], r["group"]) for r in rows}
    got, want = by_task(evaluate(model, files, **score)), by_task(evaluate(model, world, **score))
    assert got == want
    assert max(v for v, _, _ in want.values()) > 0  # a trained model: not every score is zero
