"""The one owner of the step files (`models.stepfiles`): fraction encoding, failure.json schema,
the atomic writer, the status words, and that no other module spells a step file's name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import models.synthetic as syn
from models import stepfiles as sf
from models.run import run_step
from sweep.search import SearchSettings, trial_cell
from sweep.spec import load_study
from tests.models_helpers import one_thread, trunk_step  # noqa: F401  (autouse: one torch thread)

ROOT = Path(__file__).resolve().parent.parent


def test_fractions_differing_in_the_fifth_digit_get_their_own_checkpoint(tmp_path):
    """The study keeps 6 digits; the checkpoint name used to keep 4, so these two shared a file."""
    step = trunk_step(4, fractions=(0.50001, 0.50004, 1.0))
    run_step(step, tmp_path, data=syn)
    names = sorted(p.name for p in sf.paths_of(tmp_path, step).ckpt.glob("frac-*.pt"))
    assert names == ["frac-0.500010.pt", "frac-0.500040.pt", "frac-1.000000.pt"]


def test_one_encoding_of_fractions(tmp_path):
    for f in (0.0, 0.2, 1 / 3, 0.123456, 0.9999995, 1.0):
        r = sf.round_fraction(f)
        assert sf.parse_fraction_file(sf.fraction_file(f)) == r
    assert sf.fraction_file(0.1 * 3) == sf.fraction_file(0.3)
    assert sf.parse_fraction_file("latest.pt") is None
    with pytest.raises(ValueError, match="outside"):
        sf.fraction_file(1.5)
    # The study file's rounding and search's agree with it: a trial at a grid value is that cell.
    study_file = tmp_path / "s.toml"
    study_file.write_text('[study]\nname = "s"\n[axes]\nscale = ["debug"]\nintro_fraction = [0.1234567]\n'
                          'image_ratio = [0.2]\n')
    study = load_study(study_file)
    (cell,) = study.cells
    assert cell.intro_fraction == sf.round_fraction(0.1234567) == 0.123457
    assert trial_cell(study, "debug", 0.1234567, 0.2) == cell
    assert SearchSettings(trials=1, lattice=1 / 3).fractions[1] == sf.round_fraction(1 / 3)


def test_failure_json_has_one_schema(tmp_path):
    failure = sf.Failure(step_id="abc", kind="trunk", reason="crash", error="worker died",
                         finished_at=sf.now_iso(), job_id="12.1")
    sf.write_failure(tmp_path, failure)
    assert sf.read_failure(tmp_path) == failure
    assert json.loads((tmp_path / sf.FAILURE).read_text())["status"] == sf.FAILED
    (tmp_path / sf.FAILURE).write_text(json.dumps({**json.loads((tmp_path / sf.FAILURE).read_text()),
                                                   "finished_at": 1.7e9}))
    with pytest.raises(sf.StepFileError, match=r"failure\.json: field 'finished_at'"):
        sf.read_failure(tmp_path)
    with pytest.raises(ValueError, match="reason"):
        sf.Failure(step_id="a", kind="trunk", reason="bad luck", error="", finished_at=sf.now_iso())


def test_atomic_writer_publishes_whole_files_or_nothing(tmp_path):
    target = tmp_path / "deep" / "x.json"
    sf.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with sf.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]  # no temp file left


def test_status_words_extend_file_states():
    assert set(sf.FILE_STATES) - {sf.MISSING} <= set(sf.STATES)
    assert set(sf.IN_FLIGHT) <= set(sf.STATES)


def test_no_other_module_spells_a_step_file_name():
    for name in (sf.RESULT, sf.FAILURE, sf.PROGRESS, sf.METRICS, sf.EVALS, sf.LATEST, sf.WEIGHTS,
                 sf.RUNNING_LOCK):
        spelled = subprocess.run(["grep", "-rlF", "--include=*.py", f'"{name}"', "sweep", "models",
                                  "analysis", "app"], capture_output=True, text=True, cwd=ROOT).stdout.split()
        assert spelled == ["models/stepfiles.py"], (name, spelled)


def test_importing_stepfiles_loads_neither_torch_nor_pyarrow():
    code = ("import sys, models.stepfiles, analysis.steprows as _; "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import sys, models.stepfiles; "
                          "print(sorted(m for m in ('torch', 'pyarrow', 'lightning') if m in sys.modules))"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    assert out == "[]"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == "[]"  # ingest's reader: pyarrow yes, torch never


def test_a_rerun_clears_the_temp_files_a_killed_writer_left(tmp_path):
    step = trunk_step(4, fractions=(1.0,))
    paths = sf.paths_of(tmp_path, step)
    paths.ckpt.mkdir(parents=True)
    left = [sf.temp_path(paths.latest), sf.temp_path(paths.weights), sf.temp_path(paths.failure)]
    for path in left:
        path.write_bytes(b"half a file")
    kept = paths.dir / ".notes.tmp"  # not a name the writer makes: not ours to delete
    kept.write_text("x")
    run_step(step, tmp_path, data=syn)
    assert not any(p.exists() for p in left) and kept.exists()
    assert sf.file_state(step, tmp_path) == sf.DONE
