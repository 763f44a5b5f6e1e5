"""Every `convert` format has an official-layout sample writer, and what it writes converts into
eval records the eval readers load; the same seed writes the same files."""

from __future__ import annotations

import pytest

from models.data import eval_tasks, get_tokenizer
from models.data.convert import FORMATS, VL_FORMATS, convert
from models.data.convert.samples import SAMPLES
from models.steps import DataSource

TOK = get_tokenizer(DataSource(name="world", kind="world"))


def test_every_format_has_a_sample_writer():
    assert set(SAMPLES) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_samples_convert_and_load(tmp_path, fmt):
    inputs = SAMPLES[fmt](tmp_path / "evals" / "raw", 5, 0)  # images inside the eval file's folder
    out = tmp_path / "evals" / f"{fmt}.jsonl"
    assert convert(fmt, out, **inputs) == 5
    kind = "vqa_jsonl" if fmt in VL_FORMATS else "mc_jsonl"
    (task,) = eval_tasks(DataSource(name="e", kind=kind, paths=(str(out),)), TOK, n_per_task=0,
                         image_size=8, seed=0)
    assert len(task.items) == 5 and task.group == ("vl" if fmt in VL_FORMATS else "text")
    again = SAMPLES[fmt](tmp_path / "again", 5, 0)
    first = {k: v for k, v in inputs.items() if k not in ("images",) and v.startswith(str(tmp_path))}
    for key, path in first.items():
        assert open(path, "rb").read() == open(again[key], "rb").read(), key
