"""Bad inputs are found before anything trains: `plan` (and so `run`) refuses a root that is a file,
a path or glob that matches nothing, a tokenizer that does not load and an eval file with a bad
record anywhere in it; `run` reads the first records of every shard first. A data error found
mid-run ends its step with one line (a traceback only with --debug) and the run exits 2."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from models.data.world.lexicon import vocabulary
from sweep.cli import main
from sweep.errors import DEBUG_ENV
from tests.launch_helpers import QUICK_TRUNK_FIRST

STUDY = """
[study]
name = "data"
[axes]
scale = ["debug"]
text_data = ["text"]
image_data = ["{image}"]
intro_fraction = [1.0]
image_ratio = [0.2]
[data.text]
kind = "jsonl"
paths = ["{text}"]
tokenizer = "{tokenizer}"
[data.pairs]
kind = "webdataset"
paths = ["{pairs}"]
[data.vqa]
kind = "vqa_jsonl"
paths = ["{vqa}"]
[eval]
data = "vqa"
n_per_task = 4
""" + QUICK_TRUNK_FIRST.replace("{", "{{").replace("}", "}}")


def _tokenizer_json(path) -> str:
    """A word-level tokenizer.json over the world's words (specials included), as `tokenizers`
    writes it: the HF path of the readers, with no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from models.data.tokenizer import SPECIALS

    words = list(SPECIALS) + [w for w in vocabulary() if w not in SPECIALS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return str(path)


def _png(path) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real-format files, small: a WebDataset tar of image-caption pairs, an open-answer VQA file
    (12 records, each with its image) and a tokenizer.json."""
    pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp("data")
    image = _png(out / "red.png")
    with tarfile.open(out / "pairs.tar", "w") as tar:
        for i in range(8):
            for ext, data in (("png", image), ("txt", b"a red dax .")):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    records = [{"image": str(out / "red.png"), "question": "what colour is the dax ?", "answers": ["red"]}
               for _ in range(12)]
    (out / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, _tokenizer_json(out / "tokenizer.json")


def _study(tmp_path, files, *, image="world", **paths) -> tuple:
    out, tokenizer = files
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"a dax is red . {i} ."}) + "\n" for i in range(3000)))
    values = {"text": str(text), "tokenizer": tokenizer, "pairs": str(out / "pairs.tar"),
              "vqa": str(out / "vqa.jsonl"), "image": image, **paths}
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(**values))
    return study, tmp_path / "root"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_good_study_plans(tmp_path, files, capsys):
    study, root = _study(tmp_path, files, image="pairs")
    assert main(["plan", str(study), "--root", str(root)]) == 0
    assert not root.exists()


@pytest.mark.parametrize("case", ["root is a file", "no tokenizer", "glob matches nothing",
                                  "eval record"])
def test_plan_refuses_bad_inputs_before_anything_is_written(tmp_path, files, capsys, case):
    out, _ = files
    if case == "root is a file":
        study, root = _study(tmp_path, files)
        root.write_text("")
        expect = f"{root}: the results root is not a directory"
    elif case == "no tokenizer":
        study, root = _study(tmp_path, files, tokenizer=str(tmp_path / "absent" / "tokenizer.json"))
        expect = f"tokenizer file {tmp_path / 'absent' / 'tokenizer.json'} does not exist"
    elif case == "glob matches nothing":
        study, root = _study(tmp_path, files, image="pairs", pairs=str(tmp_path / "shards" / "*.tar"))
        expect = f"no file matches '{tmp_path / 'shards' / '*.tar'}'"
    else:  # one record of 12 lacks its answers; only 4 are sampled
        vqa = tmp_path / "vqa.jsonl"
        records = [json.loads(line) | {"image": "red.png"} for line in open(out / "vqa.jsonl")]
        (tmp_path / "red.png").write_bytes((out / "red.png").read_bytes())  # beside the file: its root
        records[9].pop("answers")
        vqa.write_text("".join(json.dumps(r) + "\n" for r in records))
        study, root = _study(tmp_path, files, vqa=str(vqa))
        expect = f"{vqa}: record 9: field 'answers' is missing"
    for command in ("plan", "run"):
        assert main([command, str(study), "--root", str(root), "--backend", "inline"][
            : 4 if command == "plan" else 6]) == 2
        assert expect in _error_line(capsys)
        assert not (root / "steps").exists() and not (root / "launch").exists()


@pytest.mark.parametrize("case", ["invalid json", "truncated tar"])
def test_run_reads_every_shards_first_records_before_the_first_step(tmp_path, files, capsys, case):
    out, _ = files
    if case == "invalid json":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"text": "a dax ."}) + "\n{not json\n")
        study, root = _study(tmp_path, files, text=str(tmp_path / "*.jsonl"))
        expect = f"{bad}: record 1: not valid JSON"
    else:
        bad = tmp_path / "cut.tar"
        bad.write_bytes((out / "pairs.tar").read_bytes()[:700])  # inside the first member
        study, root = _study(tmp_path, files, image="pairs", pairs=str(bad))
        expect = f"{bad}: record 0: truncated or corrupt tar"
    assert main(["plan", str(study), "--root", str(root)]) == 0  # plan opens no shard
    capsys.readouterr()
    assert main(["run", str(study), "--root", str(root), "--backend", "inline"]) == 2
    assert expect in _error_line(capsys)
    assert not (root / "steps").exists()


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_data_error_mid_run_ends_its_step_with_one_line_and_exit_2(tmp_path, files, capsys, debug):
    study, root = _study(tmp_path, files)
    text = tmp_path / "text.jsonl"
    lines = text.read_text().splitlines()
    lines[40] = "{not json"  # past the records the pre-check reads, inside the trunk's first pass
    text.write_text("\n".join(lines) + "\n")
    argv = ["run", str(study), "--root", str(root), "--backend", "inline"] + (["--debug"] if debug else [])
    assert main(argv) == 2
    assert DEBUG_ENV not in os.environ  # --debug ends with its command: later runs in this process are plain
    captured = capsys.readouterr()
    assert f"{text}: record 40: not valid JSON" in captured.err
    assert ("Traceback" in captured.err) == debug
    assert "input" in json.loads(next((root / "steps" / "trunk").iterdir()).joinpath("failure.json")
                                 .read_text())["reason"]
    assert "not complete" in captured.out and "--retry-failed" in captured.out


def test_plan_expands_brace_shard_lists_and_names_a_missing_shard(tmp_path, files, capsys):
    out, _ = files
    for i in range(3):
        (tmp_path / f"pairs-{i:05d}.tar").write_bytes((out / "pairs.tar").read_bytes())
    pattern = str(tmp_path / "pairs-{00000..00002}.tar")
    study, root = _study(tmp_path, files, image="pairs", pairs=pattern)
    assert main(["plan", str(study), "--root", str(root)]) == 0
    assert "do not exist on this machine" not in capsys.readouterr().out
    (tmp_path / "pairs-00001.tar").unlink()
    assert main(["plan", str(study), "--root", str(root)]) == 2
    assert (f"{pattern!r}: 1 of its 3 names are missing (first: "
            f"{str(tmp_path / 'pairs-00001.tar')!r})") in _error_line(capsys)


DEEP = "[" * 100_000 + "]" * 100_000  # nested past the parser's recursion limit


@pytest.mark.parametrize("case", ["text record", "llava file"])
def test_json_nested_too_deeply_is_one_error_naming_the_file(tmp_path, files, capsys, case):
    if case == "text record":
        bad = tmp_path / "deep.jsonl"
        bad.write_text(json.dumps({"text": "a dax ."}) + "\n" + '{"text": ' + DEEP + "}\n")
        study, root = _study(tmp_path, files, text=str(tmp_path / "*.jsonl"))
        expect = f"{bad}: record 1: not valid JSON"
    else:
        bad = tmp_path / "llava.json"
        bad.write_text(DEEP)
        study, root = _study(tmp_path, files)
        study.write_text(study.read_text().replace("[finetune]\n", f'[data.llava]\nkind = "llava"\npaths = '
                                                   f'["{bad}"]\n[finetune]\ndata = "llava"\n'))
        expect = f"{bad}: record 0: not a readable JSON list"
    assert main(["run", str(study), "--root", str(root), "--backend", "inline"]) == 2
    assert expect in _error_line(capsys)
    assert not (root / "steps").exists()


def test_a_study_file_nested_too_deeply_is_one_error(tmp_path, capsys):
    study = tmp_path / "deep.toml"
    study.write_text('[study]\nname = "deep"\n[axes]\nscale = ' + DEEP + "\n")
    assert main(["plan", str(study)]) == 2
    assert f"{study}: <toml>: not valid TOML: nested too deeply" in _error_line(capsys)


def test_a_tokenizer_whose_unk_token_is_not_in_its_vocabulary_is_refused_by_plan(tmp_path, files, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    bad = tmp_path / "tokenizer.json"
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "dax": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(bad))
    study, root = _study(tmp_path, files, tokenizer=str(bad))
    assert main(["plan", str(study), "--root", str(root)]) == 2
    assert f"{bad}: model.unk_token '<unk>' is not in the tokenizer's vocabulary" in _error_line(capsys)
