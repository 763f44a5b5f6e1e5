"""Adaptive search on the debug preset through the local backend: runs, continues, reuses steps."""

from __future__ import annotations

import pytest

from sweep.cli import main
from sweep.plan import plan_study
from sweep.search import SearchSettings, _Search, hypervolume_2d, search, trial_cell
from sweep.spec import load_study

STUDY = """
[study]
name = "srch"
root = "runs"
[axes]
scale = ["debug"]
intro_fraction = [0.5]
image_ratio = [0.2]
[train]
trunk_tokens_per_param = 0.5
image_tokens_per_param = 0.25
[encoder]
samples = 256
[finetune]
samples = 32
[eval]
n_per_task = 4
pretrained = false
trunk_checkpoints = false
"""


def _dominates(a, b):
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


@pytest.mark.slow
def test_search_runs_continues_and_reuses_steps(tmp_path, capsys):
    path = tmp_path / "srch.toml"
    path.write_text(STUDY)
    assert main(["run", str(path), "--backend", "inline"]) == 0  # the grid: one cell
    capsys.readouterr()
    study = load_study(path)
    settings = SearchSettings(trials=2, workers=2, lattice=0.5, ratio_range=(0.05, 0.5))
    log: list[str] = []
    first = search(study, study.root, settings, log=log.append)
    ran = [t for t in first["trials"] if not t["from_grid"]]
    assert len(ran) == 2 and all(t["state"] == "COMPLETE" for t in ran)
    assert any(t["from_grid"] and t["params"] == {"intro_fraction": 0.5, "image_ratio": 0.2}
               for t in first["trials"])  # the grid cell joined for free
    front = [p["values"] for p in first["pareto_front"]]
    assert front and not any(_dominates(a, b) for a in front for b in front)
    every = [t["values"] for t in first["trials"] if t["values"]]
    assert all(not any(_dominates(o, p) for o in every) for p in front)

    # Re-running continues the same Optuna study; a trial on a finished cell trains nothing.
    again = _Search(study, study.root, settings, lambda m: None)
    again.optuna["debug"].enqueue_trial(ran[0]["params"])
    log.clear()
    second = search(study, study.root, SearchSettings(trials=3, workers=2, lattice=0.5,
                                                      ratio_range=(0.05, 0.5)), log=log.append)
    numbers = [t["number"] for t in second["trials"] if not t["from_grid"]]
    assert len(numbers) == 3 and set(t["number"] for t in ran) <= set(numbers)
    assert any("reusing finished steps" in line for line in log), log
    assert sum("step(s) to run" in line for line in log) == 1  # only the one new trial


def test_trial_cells_are_grid_cells(tmp_path):
    path = tmp_path / "srch.toml"
    path.write_text(STUDY)
    study = load_study(path)
    grid = plan_study(study)
    (cell,) = grid.cells
    assert trial_cell(study, "debug", 0.5, 0.2) == cell  # same cell → same step ids → reuse


def test_hypervolume_2d():
    assert hypervolume_2d([(1.0, 1.0)]) == 1.0
    assert hypervolume_2d([(2.0, 1.0), (1.0, 2.0)]) == pytest.approx(3.0)
    assert hypervolume_2d([(2.0, 1.0), (1.0, 0.5)]) == 2.0  # a dominated point adds nothing
    assert hypervolume_2d([(-1.0, 2.0)]) == 0.0  # below the reference (chance level)


def test_bad_settings_are_user_errors():
    from sweep.errors import UserError
    for kwargs in ({"trials": 0}, {"trials": 1, "lattice": 0.3}, {"trials": 1, "objectives": ("x",)},
                   {"trials": 1, "ratio_range": (0.5, 0.1)}):
        with pytest.raises(UserError):
            SearchSettings(**kwargs)


def test_search_cli_refuses_a_bad_lattice_before_writing(tmp_path, capsys):
    path = tmp_path / "srch.toml"
    path.write_text(STUDY)
    assert main(["search", str(path), "--trials", "1", "--lattice", "0.3"]) == 2
    assert "--lattice must divide 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
