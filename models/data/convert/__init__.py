"""`vlmsweep convert`: benchmarks' published files (already on disk) → the project's eval JSONL.

VL formats write `vqa_jsonl` records (images referenced relative to the output file), text formats
`mc_jsonl` records; every record carries the metric and chance its benchmark implies. Malformed
input raises `ConvertError` naming the file and the record, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from models.data.convert import text, vl
from models.data.convert.common import ConvertError, write_jsonl

VL_FORMATS = {"vqav2": vl.vqav2, "gqa": vl.gqa, "vizwiz": vl.vizwiz, "textvqa": vl.textvqa,
              "pope": vl.pope, "refcoco": vl.refcoco, "refcoco+": vl.refcoco, "refcocog": vl.refcoco,
              "ocid_ref": vl.ocid_ref}
TEXT_FORMATS = {"arc": text.arc, "hellaswag": text.hellaswag, "piqa": text.piqa, "mc": text.generic_mc}
FORMATS = tuple(VL_FORMATS) + tuple(TEXT_FORMATS)


def convert(fmt: str, out: str | Path, **inputs) -> int:
    """Convert one benchmark file set; returns the number of records written to `out`."""
    if fmt in VL_FORMATS:
        records = VL_FORMATS[fmt](out=str(out), **inputs)
    elif fmt in TEXT_FORMATS:
        records = TEXT_FORMATS[fmt](**inputs)
    else:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return write_jsonl(records, out)


__all__ = ["FORMATS", "ConvertError", "convert"]
