"""`vlmsweep tokenize` and the `tokens` source kind: a stream over the token arrays yields exactly
the batches of the text it came from and resumes the same way; a study over them has that text's
step ids while the tokens are identical, and its own once the tokenizer or a file changed; bad
input is one line and exit 2 with nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from models.data import get_tokenizer, text_stream
from models.data.materialize import write_world
from models.data.tokens import MANIFEST
from models.presets import get_preset
from models.steps import DataSource, Step, TrunkConfig, identity
from sweep.cli import main
from sweep.spec import load_study


@pytest.fixture()
def world(tmp_path):
    write_world(tmp_path / "w", 5, text_docs=120, pairs=4, instructions=4, eval_items=4, shards=3)
    return tmp_path / "w"


def _tokens(folder, **options) -> DataSource:
    return DataSource(name="tok", kind="tokens", paths=(str(folder),), options=tuple(sorted(options.items())))


def test_tokens_give_the_texts_batches_and_ids_while_identical(world, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenize", str(world / "study.toml"), "--source", "text", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and (out / MANIFEST).is_file()
    text = load_study(world / "study.toml").data["text"]
    tok = get_tokenizer(text)
    assert get_tokenizer(_tokens(out)).vocab_size == tok.vocab_size
    a = text_stream(text, tok, batch_size=3, seq_len=40, seed=2)
    b = text_stream(_tokens(out), tok, batch_size=3, seq_len=40, seed=2)
    for _ in range(25):  # past an epoch: the shard shuffle is the origin's
        x, y = next(a), next(b)
        assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.targets, y.targets)
    state = b.state_dict()
    resumed = text_stream(_tokens(out), tok, batch_size=3, seq_len=40, seed=2)
    resumed.load_state_dict(state)
    assert np.array_equal(next(resumed).tokens, next(a).tokens)
    assert identity(_tokens(out)) == identity(text)
    assert _trunk(_tokens(out)).step_id == _trunk(text).step_id
    # another tokenizer file content: the tokens may differ, so the id must
    tokenizer = text.option("tokenizer")
    data = json.loads(open(tokenizer).read())
    data["model"]["vocab"]["zzz-new-word"] = len(data["model"]["vocab"])
    with open(tokenizer, "w") as f:
        json.dump(data, f)
    changed = identity(_tokens(out))
    assert changed != identity(text) and changed["kind"] == "tokens"
    assert _trunk(_tokens(out)).step_id != _trunk(text).step_id
    with pytest.raises(ValueError, match="changed since its tokens were written"):
        get_tokenizer(_tokens(out))


def _trunk(source: DataSource) -> Step:
    preset = get_preset("debug")
    return Step(kind="trunk", config=TrunkConfig(lm=preset.model.lm, train=preset.train, data=source,
                                                 tokens=4096, seed=0))


def test_a_touched_origin_file_gives_the_tokens_their_own_id(world, tmp_path):
    out = tmp_path / "tok"
    assert main(["tokenize", str(world / "study.toml"), "--source", "text", "--out", str(out)]) == 0
    text = load_study(world / "study.toml").data["text"]
    assert identity(_tokens(out)) == identity(text)
    first = json.loads((out / MANIFEST).read_text())["origin_files"][0][0]
    os.utime(first, ns=(1, 1))
    assert identity(_tokens(out))["kind"] == "tokens"


def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, tmp_path, capsys):
    study = str(world / "study.toml")
    assert main(["tokenize", study, "--source", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "no data source 'nope'" in capsys.readouterr().err
    assert main(["tokenize", study, "--source", "pairs", "--out", str(tmp_path / "a")]) == 2
    assert "cannot be tokenised" in capsys.readouterr().err
    shard = sorted((world / "text").iterdir())[1]
    import zstandard

    shard.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a dax"}\n{broken\n'))
    assert main(["tokenize", study, "--source", "text", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: record 1: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_tokenizing_in_parallel_writes_the_same_folder_and_names_a_bad_record(world, tmp_path, capsys):
    study = str(world / "study.toml")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["tokenize", study, "--source", "text", "--out", str(one), "--workers", "1"]) == 0
    assert main(["tokenize", study, "--source", "text", "--out", str(two), "--workers", "3"]) == 0
    assert "with 3 worker(s)" in capsys.readouterr().out
    files = sorted(p.name for p in one.iterdir())
    assert files == sorted(p.name for p in two.iterdir()) and len(files) == 7  # 3 shards x 2 + manifest
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    import zstandard

    shard = sorted((world / "text").iterdir())[2]
    shard.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a dax"}\n{"text": 7}\n'))
    assert main(["tokenize", study, "--source", "text", "--out", str(tmp_path / "b"), "--workers", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: record 1: field 'text' is a int" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]
    assert main(["tokenize", study, "--source", "text", "--out", str(tmp_path / "c"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
