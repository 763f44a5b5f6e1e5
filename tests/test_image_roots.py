"""Image paths in eval and LLaVA records stay inside the source's image root (its `image_root`,
else the record file's folder): `/etc/passwd` or `../other/x.png` is refused with the file, the
record and the path, unless the study sets `allow_outside_root = true`."""

from __future__ import annotations

import io
import json

import pytest

from models.data import eval_tasks, finetune_epochs, get_tokenizer
from models.data.errors import BadRecordError
from models.data.evaltasks import check_eval_file
from models.data.llavacheck import check_llava_file
from models.steps import DataSource
from sweep.errors import StudyError
from sweep.spec import load_study

WORLD = DataSource(name="world", kind="world", options=(("seed", 5),))
TOK = get_tokenizer(WORLD)


def _png(path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return str(path)


def _vqa(tmp_path, image: str) -> str:
    path = tmp_path / "evals" / "vqa.jsonl"
    path.parent.mkdir(exist_ok=True)
    _png(tmp_path / "evals" / "ok.png")
    recs = [{"image": "ok.png", "question": "what colour ?", "answers": ["green"]},
            {"image": image, "question": "what colour ?", "answers": ["green"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def _eval(path: str, **options):
    source = DataSource(name="vqa", kind="vqa_jsonl", paths=(path,), options=tuple(sorted(options.items())))
    return eval_tasks(source, TOK, n_per_task=0, image_size=8, seed=0)


@pytest.mark.parametrize("image", ["/etc/passwd", "../other/x.png", "sub/../../other/x.png"])
def test_an_eval_record_cannot_point_outside_its_root(tmp_path, image):
    _png(tmp_path / "other" / "x.png")
    path = _vqa(tmp_path, image)
    expect = f"{path}: record 1: field 'image': {image!r} lies outside the image root"
    with pytest.raises(BadRecordError, match="lies outside") as err:
        check_eval_file(path, "vqa_jsonl")
    assert str(err.value).startswith(expect)
    with pytest.raises(BadRecordError, match="lies outside"):
        _eval(path)


def test_the_study_may_widen_the_root_or_allow_outside(tmp_path):
    _png(tmp_path / "other" / "x.png")
    path = _vqa(tmp_path, "../other/x.png")
    assert len(_eval(path, image_root=str(tmp_path))[0].items) == 2
    assert len(_eval(path, allow_outside_root=True)[0].items) == 2


def _llava(tmp_path, image: str) -> DataSource:
    _png(tmp_path / "images" / "coco" / "a.png")
    _png(tmp_path / "other" / "x.png")
    conv = [{"from": "human", "value": "<image>\nwhat ?"}, {"from": "gpt", "value": "green"}]
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps([{"image": "coco/a.png", "conversations": conv},
                               {"image": image, "conversations": conv}]))
    return DataSource(name="llava", kind="llava", paths=(str(mix),),
                      options=(("image_root", str(tmp_path / "images")),))


@pytest.mark.parametrize("image", ["/etc/passwd", "../other/x.png"])
def test_a_llava_record_cannot_point_outside_its_image_root(tmp_path, image):
    source = _llava(tmp_path, image)
    with pytest.raises(BadRecordError) as err:
        check_llava_file(source, source.paths[0], sample=1)  # its image is not even sampled
    assert str(err.value).startswith(f"{source.paths[0]}: record 1: field 'image': {image!r} lies outside")
    stream = finetune_epochs(source, TOK, batch_size=2, seq_len=32, image_size=8, image_tokens=2,
                             epochs=1, seed=0)
    with pytest.raises(BadRecordError, match="lies outside the image root"):
        next(stream)


def test_allow_outside_root_lets_a_llava_record_out(tmp_path):
    source = _llava(tmp_path, "../other/x.png")
    source = DataSource(name="llava", kind="llava", paths=source.paths,
                        options=source.options + (("allow_outside_root", True),))
    assert check_llava_file(source, source.paths[0]) == 2
    batch = next(finetune_epochs(source, TOK, batch_size=2, seq_len=32, image_size=8, image_tokens=2,
                                 epochs=1, seed=0))
    assert batch.images.shape[0] == 2


def test_the_study_reads_allow_outside_root_as_a_boolean(tmp_path):
    study = tmp_path / "s.toml"
    base = ('[study]\nname = "s"\n[axes]\nscale = ["debug"]\nintro_fraction = [1.0]\nimage_ratio = [0.2]\n'
            '[data.vqa]\nkind = "vqa_jsonl"\n'
            'paths = ["q.jsonl"]\nimage_root = "imgs"\n')
    study.write_text(base + "allow_outside_root = true\n")
    source = load_study(study).data["vqa"]
    assert source.option("allow_outside_root") is True
    assert source.option("image_root") == str(tmp_path / "imgs")
    study.write_text(base + 'allow_outside_root = "yes"\n')
    with pytest.raises(StudyError, match="allow_outside_root"):
        load_study(study)
