"""run_step's file contract: config/metrics/evals/result/progress files and their columns,
failure.json, a done step skipped, a trunk replaying a checkpoint fraction it lacks, the encoder
step feeding a frozen vision tower, signal handlers restored, and a torch-free `import models.run`."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys

import polars as pl
import pytest
import torch

import models.synthetic as syn
from models import checkpoint as ck
from models.config import ProjectorConfig
from models.run import run_step
from models.stepfiles import TIMING_METRICS, fraction_step, step_dir, step_paths
from models.steps import EncoderConfig, Step
from tests.models_helpers import (
    LM,
    SRC,
    VISION,
    branch_step,
    eval_step,
    metrics,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    trunk_step,
)

RESULT_KEYS = {"step_id", "kind", "status", "tokens", "flops", "params", "wall_time_s",
               "peak_memory_bytes", "code_salt", "git_commit", "started_at", "finished_at",
               "hostname", "device", "ranks", "data_wait_share"}


def test_trunk_writes_every_file_with_the_contracted_columns(tmp_path) -> None:
    step = trunk_step(6, fractions=(0.0, 0.5))
    result = run_step(step, tmp_path, data=syn)
    d = step_dir(tmp_path, "trunk", step.step_id)
    assert json.loads((d / "config.json").read_text()) == json.loads(json.dumps(step.to_json()))
    assert json.loads((d / "result.json").read_text()) == result
    assert RESULT_KEYS | {"checkpoint_fractions"} == set(result)
    assert result["status"] == "done" and result["tokens"] == 6 * 4 * 32
    assert result["params"] == {"embedding": 2 * 64 * 32, "non_embedding": LM.n_layers * (
        2 * 32 + 4 * 32 * 32 + 3 * 32 * 96) + 32, "lm_total": 2 * 64 * 32 + result["params"]["non_embedding"],
        "vision": 0, "projector": 0}
    assert result["flops"] > 6 * result["params"]["non_embedding"] * result["tokens"]
    assert result["checkpoint_fractions"] == [0.0, 0.5]
    assert 0.0 <= result["data_wait_share"] < 1.0  # Σ data_wait_s ÷ Σ step seconds
    m = pl.read_parquet(d / "metrics.parquet")
    assert m.schema == pl.Schema({"step": pl.Int64, "tokens": pl.Int64, "name": pl.String,
                                  "value": pl.Float64})
    names = set(m["name"])
    assert {"train_loss", "text_loss", "lr", "grad_norm", "tokens_per_s", "skipped_records",
            "data_wait_s"} <= names
    assert sorted(set(m["step"])) == list(range(1, 7))
    losses = m.filter(pl.col("name") == "train_loss")["value"]
    assert losses[-1] < losses[0]
    progress = json.loads((d / "progress.json").read_text())
    assert set(progress) == {"tokens", "total_tokens", "tokens_per_s", "data_wait_share", "updated_at"}
    assert not (d / "ckpt" / "latest.pt").exists()
    for f in (0.0, 0.5):
        assert ck.load_torch(step_paths(tmp_path, "trunk", step.step_id).fraction(f))["step"] == \
            fraction_step(f, step.config.tokens, 4 * 32)


def test_done_step_is_skipped_and_eval_writes_evals(tmp_path) -> None:
    step = trunk_step(4, fractions=())
    first = run_step(step, tmp_path, data=syn)
    assert run_step(step, tmp_path, data=syn) == first
    ev = dataclasses.replace(eval_step(step), config=dataclasses.replace(
        eval_step(step).config, groups=("text",)))
    run_step(ev, tmp_path, data=syn)
    e = pl.read_parquet(step_dir(tmp_path, "eval", ev.step_id) / "evals.parquet")
    assert e.schema == pl.Schema({"task": pl.String, "group": pl.String, "metric": pl.String,
                                  "value": pl.Float64, "chance": pl.Float64, "n": pl.Int64,
                                  "primary_metric": pl.Boolean})
    # a multiple-choice task reports acc (its primary metric) and acc_norm; a text LM's held-out
    # loss follows (no captions: it has no image side)
    common = {"task": "progression", "group": "text", "chance": 0.5, "n": 6}
    assert e.to_dicts() == [common | {"metric": "acc", "value": e["value"][0], "primary_metric": True},
                            common | {"metric": "acc_norm", "value": e["value"][1], "primary_metric": False},
                            {"task": "heldout_text", "group": "text", "metric": "val_loss", "value": e["value"][2],
                             "chance": None, "n": 8 * 32, "primary_metric": False}]
    assert 0 < e["value"][2] < 10
    with pytest.raises(ValueError, match="no vision side"):
        run_step(eval_step(step), tmp_path, data=syn)


def test_failure_json_names_the_missing_trunk_checkpoint(tmp_path) -> None:
    trunk = trunk_step(4, fractions=(1.0,))
    run_step(trunk, tmp_path, data=syn)
    branch = branch_step(trunk, fraction=0.5)
    with pytest.raises(FileNotFoundError, match="frac-0.500000"):
        run_step(branch, tmp_path, data=syn)
    failure = json.loads((step_dir(tmp_path, "branch", branch.step_id) / "failure.json").read_text())
    assert failure["status"] == "failed" and failure["reason"] == "exception"
    assert "frac-0.500000" in failure["error"] and "Traceback" in failure["traceback"]


def test_done_trunk_replays_a_missing_fraction_identically(tmp_path) -> None:
    full = trunk_step(10, fractions=(0.0, 0.3, 0.8))
    run_step(full, tmp_path / "a", data=syn)
    sparse = trunk_step(10, fractions=(0.0, 0.8))
    assert sparse.step_id == full.step_id  # fractions live in meta: same trunk
    run_step(sparse, tmp_path / "b", data=syn)
    d = step_dir(tmp_path / "b", "trunk", sparse.step_id)
    before = (d / "metrics.parquet").read_bytes()
    result = run_step(full, tmp_path / "b", data=syn)  # now asks for 0.3 as well
    assert result["checkpoint_fractions"] == [0.0, 0.3, 0.8]
    assert (d / "metrics.parquet").read_bytes() == before
    a = ck.load_torch(step_paths(tmp_path / "a", "trunk", full.step_id).fraction(0.3))
    b = ck.load_torch(step_paths(tmp_path / "b", "trunk", full.step_id).fraction(0.3))
    assert a["step"] == b["step"] == 3 and a["data"] == b["data"]
    untimed = [[r for r in x["metrics"] if r[2] not in TIMING_METRICS] for x in (a, b)]
    assert untimed[0] == untimed[1]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_encoder_step_trains_a_vit_that_branches_load_frozen(tmp_path) -> None:
    vision = dataclasses.replace(VISION, frozen=True, pretrain=True)
    enc = Step(kind="encoder", config=EncoderConfig(
        vision=vision, data=SRC, text_width=32, text_layers=1, vocab_size=syn.VOCAB,
        samples=8 * 16, batch_size=16, lr=3e-3, seed=0))
    result = run_step(enc, tmp_path, data=syn)
    assert result["params"]["vision"] > 0
    assert set(metrics(tmp_path, enc)["name"]) >= {"encoder_loss", "train_loss", "lr"}
    trunk = trunk_step(4, fractions=(1.0,))
    run_step(trunk, tmp_path, data=syn)
    branch = dataclasses.replace(branch_step(trunk, fraction=1.0, schedule="rewarm"),
                                 parents=(("trunk", trunk.step_id), ("encoder", enc.step_id)))
    branch = Step(kind="branch", parents=branch.parents, config=dataclasses.replace(
        branch.config, vision=vision, projector=ProjectorConfig(kind="linear")))
    run_step(branch, tmp_path, data=syn)
    vit = ck.load_torch(step_dir(tmp_path, "encoder", enc.step_id) / "model.pt")["model"]
    final = ck.load_torch(step_dir(tmp_path, "branch", branch.step_id) / "model.pt")["model"]
    for k, v in vit.items():
        torch.testing.assert_close(final["vision." + k], v, rtol=0, atol=0)


def test_signal_handlers_are_restored(tmp_path) -> None:
    def mine(*_):
        return None
    old = signal.signal(signal.SIGUSR2, mine)
    try:
        run_step(trunk_step(2, fractions=()), tmp_path, data=syn)
        assert signal.getsignal(signal.SIGUSR2) is mine
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_import_models_run_stays_torch_free() -> None:
    code = "import sys, models.run; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from models.config import RunOptions, default_threads

    monkeypatch.setenv("VLMSWEEP_THREADS", "3")
    monkeypatch.setenv("VLMSWEEP_WORKERS", "2")
    assert RunOptions().threads == 3  # an explicit thread count wins
    monkeypatch.delenv("VLMSWEEP_THREADS")
    assert default_threads() == max(1, (os.cpu_count() or 1) // 2)  # workers share the cores
    monkeypatch.setenv("VLMSWEEP_WORKERS", str(10 * (os.cpu_count() or 1)))
    assert default_threads() == 1
    monkeypatch.delenv("VLMSWEEP_WORKERS")
    assert default_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("VLMSWEEP_THREADS", "two")
    with pytest.raises(ValueError, match="VLMSWEEP_THREADS"):
        default_threads()
    with pytest.raises(ValueError, match="threads"):
        RunOptions(threads=0)


def test_a_host_allocation_failure_is_an_oom() -> None:
    import torch

    from models.run import failure_reason

    with pytest.raises(RuntimeError) as caught:  # the real allocator's error: more than any host has
        torch.empty(2 ** 60, dtype=torch.uint8)
    assert failure_reason(caught.value) == "oom"
    assert failure_reason(MemoryError()) == "oom"
    assert failure_reason(RuntimeError("shape mismatch")) == "exception"
