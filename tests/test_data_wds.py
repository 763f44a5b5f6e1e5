"""WebDataset shards as img2dataset writes them: the image member the source's `image_ext` names
(not merely the first image-like member), and the caption from KEY.txt or from a field of KEY.json
(`caption_field`; some shards hold only the JSON)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from models.data import readers as rd
from models.data.errors import BadRecordError
from models.data.sources import open_source
from models.steps import DataSource
from sweep.errors import StudyError
from sweep.spec import load_study


def _image(fmt: str, colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format=fmt)
    return buf.getvalue()


def _shard(path, samples: list[dict[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def _first(path: str, **options):
    source = DataSource(name="p", kind="webdataset", paths=(path,),
                        options=tuple(sorted({"shuffle_shards": False, **options}.items())))
    return open_source(source, "pairs", image_size=16).next()[0]


def test_image_ext_picks_the_member(tmp_path):
    jpg, mask = _image("JPEG", (0, 0, 250)), _image("PNG", (255, 255, 255))
    path = _shard(tmp_path / "a.tar", [{"mask.png": mask, "jpg": jpg, "txt": b"a blue dax"}])
    image, caption = _first(path, image_ext="jpg")
    assert caption == "a blue dax" and np.array_equal(image, rd.decode_image(jpg, 16, path, 0))
    image, _ = _first(path, image_ext="webp;jpg")  # alternatives, the first present wins
    assert np.array_equal(image, rd.decode_image(jpg, 16, path, 0))
    with pytest.raises(BadRecordError, match=r"record 0: sample '000000000' has no \.png image"):
        _first(path, image_ext="png")


def test_caption_from_json_beside_or_instead_of_txt(tmp_path):
    jpg = _image("JPEG", (0, 0, 250))
    meta = json.dumps({"caption": "a dax on grass", "alt": "alt text", "url": "http://x"}).encode()
    only_json = _shard(tmp_path / "j.tar", [{"jpg": jpg, "json": meta}])
    assert _first(only_json)[1] == "a dax on grass"
    assert _first(only_json, caption_field="alt")[1] == "alt text"
    both = _shard(tmp_path / "b.tar", [{"jpg": jpg, "txt": b"from txt", "json": meta}])
    assert _first(both)[1] == "from txt"
    assert _first(both, caption_field="alt")[1] == "alt text"  # a named field is the caption
    with pytest.raises(BadRecordError, match=r"record 0: field 'title' is missing"):
        _first(both, caption_field="title")
    neither = _shard(tmp_path / "n.tar", [{"jpg": jpg}])
    with pytest.raises(BadRecordError, match=r"has no \.txt or \.json caption"):
        _first(neither)


@pytest.mark.parametrize(("value", "ok"), [("jpg", True), ("jpg;png", True), ("seg.png", True),
                                           (".jpg", False), ("jpg png", False)])
def test_the_study_validates_image_ext(tmp_path, value, ok):
    study = tmp_path / "s.toml"
    study.write_text(f'[study]\nname = "s"\n[axes]\nscale = ["debug"]\nimage_data = ["p"]\n'
                     f'intro_fraction = [1.0]\nimage_ratio = [0.2]\n'
                     f'[data.p]\nkind = "webdataset"\npaths = ["x.tar"]\nimage_ext = "{value}"\n'
                     f'caption_field = "alt"\n')
    if ok:
        assert load_study(study).data["p"].option("image_ext") == value
    else:
        with pytest.raises(StudyError, match="is not a member extension"):
            load_study(study)
