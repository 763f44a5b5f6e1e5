"""The pre-check of a LLaVA JSON file before anything trains on it: every record's fields (the
665k records of LLaVA-1.5's mix in seconds: no image is opened for this), that the images exist for
a sample of records spread over the whole file, and that the first records decode. The first
problem is a BadRecordError naming the file, the record and the field.
"""

from __future__ import annotations

import numpy as np

from models.data import files
from models.data import readers as rd
from models.data.errors import BadRecordError
from models.data.sources import llava_fields, llava_image_path, llava_parser

IMAGE_SAMPLE = 1000  # records whose image must exist, spread evenly over the file
DECODED = 2  # first records whose images are decoded too


def check_llava_file(source, path: str, *, sample: int = IMAGE_SAMPLE, decoded: int = DECODED,
                     image_size: int = 32) -> int:
    """Check `path` of LLaVA source `source`; return its number of records."""
    store = files.storage_of(source)
    records = []
    for idx, rec in rd.iter_llava(path, storage=store):
        if isinstance(rec, BadRecordError):
            raise rec
        records.append((idx, llava_fields(rec, path, idx)[0]))
    if not records:
        raise BadRecordError(path, -1, "empty LLaVA file: no records")
    with_image = [(idx, rel) for idx, rel in records if rel is not None]
    if with_image:
        picks = np.unique(np.linspace(0, len(with_image) - 1, min(sample, len(with_image))).astype(int))
        root, outside = source.option("image_root"), bool(source.option("allow_outside_root", False))
        for idx, rel in with_image:  # every record's path is confined: names only, no file opened
            llava_image_path(rel, path, idx, root, outside)
        for k in picks:
            idx, rel = with_image[int(k)]
            image = llava_image_path(rel, path, idx, root, outside)
            if not files.is_file(image, store):
                raise BadRecordError(path, idx, f"field 'image': {image!r} does not exist")
    parse = llava_parser(source, image_size)
    for idx, rec in rd.iter_llava(path, storage=store) if decoded else ():
        if idx >= decoded:
            break
        parse(rec, path, idx)
    return len(records)
