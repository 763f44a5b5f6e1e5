"""Shard lists as published data names them: WebDataset brace lists (`{00000..13999}`, `{a,b}`)
expanded as `braceexpand` reads them, with globs, and a missing name reported with the pattern,
how many names are missing and the first of them."""

from __future__ import annotations

import pytest

from models.data import files
from models.data.errors import DataError
from models.data.sources import resolve_paths
from models.steps import DataSource


def _source(*paths: str) -> DataSource:
    return DataSource(name="pairs", kind="webdataset", paths=paths)


def test_brace_lists_expand_with_zero_padding_and_comma_lists(tmp_path):
    for name in ("00000.tar", "00001.tar", "00002.tar", "a-x.tar", "b-x.tar", "b-y.tar"):
        (tmp_path / name).write_bytes(b"")
    assert files.expand(str(tmp_path / "{00000..00002}.tar")) == [
        str(tmp_path / f"0000{i}.tar") for i in range(3)]
    got = resolve_paths(_source(str(tmp_path / "{00000..00002}.tar"), str(tmp_path / "{a,b}-*.tar")))
    assert got == [str(tmp_path / n) for n in
                   ("00000.tar", "00001.tar", "00002.tar", "a-x.tar", "b-x.tar", "b-y.tar")]


def test_fourteen_thousand_names_resolve(tmp_path):
    for i in range(14_000):
        (tmp_path / f"{i:05d}.tar").touch()
    got = resolve_paths(_source(str(tmp_path / "{00000..13999}.tar")))
    assert len(got) == 14_000 and got[0].endswith("00000.tar") and got[-1].endswith("13999.tar")


@pytest.mark.parametrize("present", [0, 2])
def test_a_missing_brace_name_is_named_with_the_pattern_and_the_count(tmp_path, present):
    for i in range(present):
        (tmp_path / f"{i:05d}.tar").touch()
    pattern = str(tmp_path / "{00000..00009}.tar")
    with pytest.raises(DataError) as err:
        resolve_paths(_source(pattern))
    lead = "no file matches" if present == 0 else "some names do not exist in"
    assert str(err.value) == (f"data source 'pairs': {lead} {pattern!r}: {10 - present} of its 10 "
                              f"names are missing (first: {str(tmp_path / f'{present:05d}.tar')!r})")
