"""Tiny files in the published layouts of the referring-expression benchmarks, for tests and rehearsals.

Each `write_<format>(folder, n, seed)` writes `n` expressions (over a few small images) the way the
benchmark publishes them and returns the keyword inputs of its `vlmsweep convert` converter (all but
`out`): RefCOCO / RefCOCO+ / RefCOCOg as the REFER API reads them (refs(unc).p or refs(umd).p, a
pickled list of refs, beside instances.json, with COCO train2014 images), OCID-Ref as its expressions
JSON keyed by id (scene paths, pixel boxes as JSON strings, take ids) under the OCID dataset folder.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from models.data.convert.vl import OCID_IMAGE_SIZE

_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
_WORDS = ("red", "blue", "left", "right", "cup", "man", "dog", "small", "big", "near", "the", "chair")


def _image(path: Path, width: int, height: int, rng: np.random.Generator) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))


def _box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    return x1, y1, int(rng.integers(x1 + 2, width + 1)), int(rng.integers(y1 + 2, height + 1))


def _write_refer(dataset: str, folder: Path, n: int, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    root, images = Path(folder) / dataset, Path(folder) / "train2014"
    root.mkdir(parents=True, exist_ok=True)
    coco_images, annotations, refs = [], [], []
    n_images = max(1, min(n, 4))
    for i in range(n_images):
        image_id, width, height = 100_000 + i, int(rng.integers(24, 48)), int(rng.integers(24, 48))
        name = f"COCO_train2014_{image_id:012d}.jpg"
        _image(images / name, width, height, rng)
        coco_images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    for ref_id in range(n):  # one sentence per ref in `val`, and one train ref the converter skips
        image = coco_images[ref_id % n_images]
        x1, y1, x2, y2 = _box(rng, image["width"], image["height"])
        annotations.append({"id": 500 + ref_id, "image_id": image["id"], "category_id": 1, "iscrowd": 0,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        refs.append({"ref_id": ref_id, "ann_id": 500 + ref_id, "image_id": image["id"], "category_id": 1,
                     "split": "val", "file_name": image["file_name"], "sent_ids": [ref_id],
                     "sentences": [{"sent_id": ref_id, "sent": (s := _sentence(rng)), "raw": s,
                                    "tokens": s.split()}]})
    refs.append({**refs[0], "ref_id": n, "split": "train", "sentences": [{"sent_id": n, "sent": "a train ref"}]})
    refs_file = root / f"refs({_SPLIT_BY[dataset]}).p"
    refs_file.write_bytes(pickle.dumps(refs, protocol=2))
    instances = root / "instances.json"
    instances.write_text(json.dumps({"images": coco_images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}))
    return {"refs": str(refs_file), "instances": str(instances), "images": str(images), "split": "val"}


def write_refcoco(folder: Path, n: int, seed: int) -> dict[str, str]:
    return _write_refer("refcoco", folder, n, seed)


def write_refcoco_plus(folder: Path, n: int, seed: int) -> dict[str, str]:
    return _write_refer("refcoco+", folder, n, seed)


def write_refcocog(folder: Path, n: int, seed: int) -> dict[str, str]:
    return _write_refer("refcocog", folder, n, seed)


def write_ocid_ref(folder: Path, n: int, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    images = Path(folder) / "OCID-dataset"
    width, height = OCID_IMAGE_SIZE
    scenes = [f"ARID20/table/top/seq{i:02d}/rgb/result_2018-08-2{i % 10}-10-00-00.png" for i in range(min(n, 3) or 1)]
    for scene in scenes:  # full-size scenes: the boxes are in 640 x 480 pixels
        _image(images / scene, width, height, rng)
    expressions = {}
    for i in range(n):
        box = list(_box(rng, width, height))
        expressions[str(i)] = {"take_id": int(rng.integers(0, 21)), "scene_path": scenes[i % len(scenes)],
                               "sub_id": i, "scene_instance_id": i, "class": "cup", "bbox": json.dumps(box),
                               "sentence": _sentence(rng)}
    path = Path(folder) / "val_expressions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(expressions))
    return {"expressions": str(path), "images": str(images)}


SAMPLE_WRITERS = {"refcoco": write_refcoco, "refcoco+": write_refcoco_plus, "refcocog": write_refcocog,
                  "ocid_ref": write_ocid_ref}  # convert format -> its sample writer
