"""`vlmsweep rehearse`: the paper's study on tiny files in its sources' published layouts, with
tiny models, inline — every step kind and source kind it names trains and evaluates, then ingest,
report and predict run (one slow test); the shrinking keeps the grid and each preset's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.presets import PRESETS
from sweep.cli import main
from sweep.rehearse import Shrink, cover_cells, presets_replaced, rehearse, tiny_presets
from sweep.rehearse_files import Layout
from sweep.spec import AXES, load_study

PAPER = Path(__file__).resolve().parents[1] / "studies" / "paper.toml"
LAYOUT = Layout()  # every part of the published layouts: brace lists, LLaVA's image root, text-only records


def test_the_cover_keeps_every_scale_and_source_then_every_axis_value():
    study = load_study(PAPER)
    few = cover_cells(study.cells, 1)
    for axis in ("scale", "text_data", "image_data"):
        assert {getattr(c, axis) for c in few} == {getattr(c, axis) for c in study.cells}, axis
    assert any(c.instruction_share > 0 for c in few) and len(few) == 6
    enough = cover_cells(study.cells, 18)
    for axis in AXES:
        assert {getattr(c, axis) for c in enough} == {getattr(c, axis) for c in study.cells}, axis
    assert len(enough) == 18 and cover_cells(study.cells, 0) == list(study.cells)


def test_tiny_presets_keep_the_recipe_in_size_order():
    study = load_study(PAPER)
    tiny = tiny_presets(study.axes["scale"], Shrink())
    widths = [tiny[s].model.lm.d_model for s in ("79m", "154m", "411m", "1.4b")]
    assert widths == sorted(widths) and len(set(widths)) == 4
    for name, preset in tiny.items():
        real = PRESETS[name]
        assert (preset.model.lm.qk_norm, preset.model.lm.norm, preset.train.z_loss, preset.train.floor_lr,
                preset.train.lr) == (real.model.lm.qk_norm, real.model.lm.norm, real.train.z_loss,
                                     real.train.floor_lr, real.train.lr)
    with presets_replaced(tiny):
        assert PRESETS["1.4b"] is tiny["1.4b"]
    assert PRESETS["1.4b"].model.lm.d_model == 2048  # restored


def test_bad_shrink_is_refused_in_one_line(tmp_path, capsys):
    assert main(["rehearse", str(PAPER), "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_rehearse_the_paper_study(tmp_path):
    summary = rehearse(PAPER, tmp_path, shrink=Shrink(max_cells=1), layout=LAYOUT, log=lambda _: None)
    assert summary["cells"] == 6 and summary["grid_cells"] == 340
    assert set(summary["step_kinds"]) == {"trunk", "branch", "finetune", "eval"}  # hf SigLIP: no encoder step
    assert summary["step_kinds"]["trunk"] == 4  # one per scale, shared by the seeds
    assert set(summary["source_kinds"]) == {"jsonl", "webdataset", "parquet_images", "llava",
                                            "vqa_jsonl", "mc_jsonl"}
    codes = summary["exit_codes"]
    assert codes["ingest"] == 0 and codes["report"] == 0 and codes["predict"] in (0, 2)
    assert (tmp_path / "report" / "findings.md").exists()


def test_sources_are_written_in_their_published_layouts(tmp_path):
    import json

    from models.data.sources import resolve_paths
    from models.steps import DataSource
    from sweep.rehearse_files import write_sources

    study = load_study(PAPER)
    extra = DataSource(name="mine", kind="vqa_jsonl", paths=("/evals/my_task.jsonl",))
    out = write_sources(study.data | {"mine": extra}, tmp_path, records=4)
    (brace,) = out["datacomp_dr"].paths
    assert brace.endswith("{00000..00001}.tar") and len(resolve_paths(out["datacomp_dr"])) == 2
    assert len(resolve_paths(out["dclm"])) == 2 and out["dclm"].paths[0].endswith("shard_*.jsonl.zst")
    llava = out["llava"]
    records = json.loads(Path(llava.paths[0]).read_text())
    root = Path(llava.option("image_root"))
    assert Path(llava.paths[0]).name == "llava_v1_5_mix665k.json" and root.name == "images"
    assert any("image" not in r for r in records) and any(len(r["conversations"]) > 2 for r in records)
    assert all((root / r["image"]).is_file() for r in records if "image" in r)
    stems = [Path(p).stem for p in out["vl_evals"].paths + out["text_evals"].paths + out["mine"].paths]
    assert stems == [Path(p).stem for p in study.data["vl_evals"].paths + study.data["text_evals"].paths] + ["my_task"]
    assert all(Path(p).stat().st_size > 0 for p in out["mine"].paths)
