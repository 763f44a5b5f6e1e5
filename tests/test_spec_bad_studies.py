"""Bad study files: each refused with one message naming the file and key path, exit 2, nothing written."""

from __future__ import annotations

import pytest

from sweep.cli import main

GOOD = """
[study]
name = "t"
root = "out"

[data.shards]
kind = "webdataset"
paths = ["shards/a.tar"]

[axes]
scale = ["debug"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.1]
"""

EVALS = """
[data.vl]
kind = "vqa_jsonl"
paths = ["evals/vqav2.jsonl", "evals/gqa.jsonl"]

[data.more]
kind = "vqa_jsonl"
paths = ["other/vqav2.jsonl"]

[data.text]
kind = "mc_jsonl"
paths = ["evals/hellaswag.jsonl", "evals/fact_recall.jsonl"]
"""

# (name, edit applied to GOOD, key path expected in the message, text expected in the message)
CASES = [
    ("unknown top-level key", GOOD + "\n[bogus]\nx = 1\n", "bogus", "unknown key"),
    ("unknown axis", GOOD.replace("image_ratio = [0.1]", "image_ratio = [0.1]\ncolour = [1]"),
     "axes.colour", "unknown key"),
    ("wrong type", GOOD.replace("intro_fraction = [0.5, 1.0]", 'intro_fraction = ["half"]'),
     "axes.intro_fraction[0]", "expected a number"),
    ("scalar instead of list", GOOD.replace("intro_fraction = [0.5, 1.0]", "intro_fraction = 0.5"),
     "axes.intro_fraction", "expected a list"),
    ("out of range", GOOD.replace("image_ratio = [0.1]", "image_ratio = [1.5]"),
     "axes.image_ratio[0]", "out of range"),
    ("zero image ratio", GOOD.replace("image_ratio = [0.1]", "image_ratio = [0.0]"),
     "axes.image_ratio", "no image data"),
    ("unknown preset", GOOD.replace('scale = ["debug"]', 'scale = ["huge"]'),
     "axes.scale[0]", "unknown preset 'huge'"),
    ("unknown data source", GOOD.replace("image_ratio = [0.1]", 'image_ratio = [0.1]\nimage_data = ["laion"]'),
     "axes.image_data[0]", "unknown data source 'laion'"),
    ("source of the wrong kind", GOOD.replace("image_ratio = [0.1]", 'image_ratio = [0.1]\ntext_data = ["shards"]'),
     "axes.text_data[0]", "cannot serve as text_data"),
    ("empty axis", GOOD.replace("intro_fraction = [0.5, 1.0]", "intro_fraction = []"),
     "axes.intro_fraction", "must not be empty"),
    ("duplicate values", GOOD.replace("intro_fraction = [0.5, 1.0]", "intro_fraction = [0.5, 0.5]"),
     "axes.intro_fraction", "twice"),
    ("missing required axis", GOOD.replace("image_ratio = [0.1]\n", ""),
     "axes.image_ratio", "is required"),
    ("exclude matching nothing", GOOD + "\n[[exclude]]\nintro_fraction = [0.2]\n",
     "exclude[0]", "matches no cell"),
    ("include adding nothing", GOOD + "\n[[include]]\nintro_fraction = [0.5]\n",
     "include[0]", "adds no cell"),
    ("exclude removing everything", GOOD + "\n[[exclude]]\nscale = [\"debug\"]\n",
     "exclude", "remove every cell"),
    ("empty rule", GOOD + "\n[[exclude]]\n", "exclude[0]", "at least one axis"),
    ("bad schedule", GOOD.replace("image_ratio = [0.1]", 'image_ratio = [0.1]\nschedule = ["linear"]'),
     "axes.schedule[0]", "not one of"),
    ("bad slurm time", GOOD + '\n[backend.slurm]\ntime = "soon"\n', "backend.slurm.time", "HH:MM:SS"),
    ("negative micro-batch", GOOD + "\n[backend]\nmicro_batch = -1\n", "backend.micro_batch", "out of range"),
    ("micro-batch of a scale not swept", GOOD + '\n[backend.micro_batch]\n"79m" = 8\n',
     "backend.micro_batch.79m", "not on the scale axis"),
    ("override for a scale not studied", GOOD + "\n[train.scale.1m]\nlr = 1e-3\n",
     "train.scale.1m", "not on the scale axis"),
    ("negative lr", GOOD + "\n[train]\nlr = -1.0\n", "train.lr", "out of range"),
    ("pixel shuffle that does not divide the patch grid",
     GOOD + '\n[model.projector]\npixel_shuffle = 3\n', "model.projector.pixel_shuffle",
     "divides"),
    ("eval chance outside [0, 1]",
     GOOD + '\n[data.vqa]\nkind = "vqa_jsonl"\npaths = ["vqa.jsonl"]\nchance = 1.5\n',
     "data.vqa.chance", "out of range"),
    ("world with too few kinds", GOOD + '\n[data.small]\nkind = "world"\nn_kinds = 2\n',
     "data.small.n_kinds", "4 to 48 kinds"),
    ("training on one world and evaluating on another",
     GOOD.replace("image_ratio = [0.1]", 'image_ratio = [0.1]\ntext_data = ["w8"]\nimage_data = ["w8"]')
     + '\n[data.w8]\nkind = "world"\nn_kinds = 8\n[finetune]\ndata = "w8"\n',
     "eval.data", "the built-in world with seed 0 and 32 kinds, but the study trains on 'w8'"),
    ("text replay of a whole batch", GOOD + "\n[finetune]\ntext_replay = 1.0\n",
     "finetune.text_replay", "out of range"),
    ("invalid vision override", GOOD + '\n[model.vision]\nkind = "patch"\nfrozen = true\n',
     "model.vision", "frozen must be false"),
    ("a batch that does not divide over a scale's ranks",  # debug: 4 sequences a batch
     GOOD + '\n[backend.slurm.scale.debug.trunk]\ngpus_per_node = 3\n',
     "backend.slurm.scale.debug.trunk.gpus_per_node", "4 rows (train.batch_size) over 3 ranks"),
    ("a batch that does not divide over two nodes",
     GOOD + '\n[backend.slurm]\nnodes = 2\ntasks_per_node = 4\n',
     "backend.slurm.tasks_per_node", "over 8 ranks: it does not divide"),
    ("a fine-tune batch that does not divide over local GPUs",
     GOOD + '\n[backend]\ngpus_per_step = 4\n[finetune]\nbatch_size = 6\n',
     "backend.gpus_per_step", "finetune steps of scale debug split a batch of 6 rows"),
    ("micro-batches that do not divide a rank's rows",
     GOOD + '\n[train]\nbatch_size = 12\n[backend]\nmicro_batch = 4\n[backend.slurm]\ntasks_per_node = 2\n',
     "backend.micro_batch", "6 rows each: micro-batches of 4 do not divide them"),
    ("fsdp with micro-batches",
     GOOD + '\n[train]\nbatch_size = 16\n[backend]\nmicro_batch = 2\n'
     '[backend.slurm.branch]\nstrategy = "fsdp"\ngpus_per_node = 2\n',
     "backend.slurm.branch.strategy", "fsdp trains one forward/backward per step"),
    ("unknown strategy", GOOD + '\n[backend.slurm]\nstrategy = "zero3"\n', "backend.slurm.strategy",
     "not one of 'ddp', 'fsdp'"),
    ("gpus under its old name", GOOD + '\n[backend.slurm]\ngpus = 8\n', "backend.slurm.gpus",
     "is now gpus_per_node"),
    ("slurm layout for a scale not studied", GOOD + '\n[backend.slurm.scale."1.4b"]\nnodes = 2\n',
     "backend.slurm.scale.1.4b", "not on the scale axis"),
    ("source without paths", GOOD.replace('paths = ["shards/a.tar"]\n', ""),
     "data.shards.paths", "is required"),
    ("unknown source option", GOOD.replace('kind = "webdataset"', 'kind = "webdataset"\ncolour = "red"'),
     "data.shards.colour", "unknown key"),
    ("a task in two eval sources", GOOD + EVALS + '[eval]\ndata = ["vl", "more"]\n', "eval.data",
     "task 'vqav2' is in two sources, 'vl' and 'more'"),
    ("a world task in a file source too", GOOD + EVALS + '[eval]\ndata = ["world", "text"]\n', "eval.data",
     "task 'fact_recall' is in two sources, 'world' and 'text'"),
    ("an eval source listed twice", GOOD + EVALS + '[eval]\ndata = ["vl", "vl"]\n', "eval.data", "twice"),
    ("an eval source of the wrong kind", GOOD + '[eval]\ndata = ["world", "shards"]\n', "eval.data[1]",
     "allowed here"),
    ("an unknown stable metric",
     GOOD + EVALS + '[eval]\ndata = ["text"]\n[eval.stable_metric]\nhellaswag = "accuracy"\n',
     "eval.stable_metric.hellaswag", "not one of"),
    ("a stable metric for a task no source has",
     GOOD + EVALS + '[eval]\ndata = ["text"]\n[eval.stable_metric]\narc = "acc_norm"\n', "eval.stable_metric",
     "names task 'arc', which no eval source has"),
    ("a chance for a task no source has", GOOD + EVALS + '[eval]\ndata = ["text"]\n[eval.chance]\npiqa = 0.5\n',
     "eval.chance", "names task 'piqa'"),
    ("an eval group that is neither vl nor text",
     GOOD + '\n[data.v]\nkind = "vqa_jsonl"\npaths = ["v.jsonl"]\ngroup = "audio"\n', "data.v.group", "not one of"),
    ("an unknown eval metric", GOOD + '\n[data.v]\nkind = "vqa_jsonl"\npaths = ["v.jsonl"]\nmetric = "bleu"\n',
     "data.v.metric", "not one of"),
    ("missing [study]", GOOD.replace('[study]\nname = "t"\nroot = "out"\n', ""), "study", "is required"),
    ("not TOML", "[study\nname = ", "<toml>", "not valid TOML"),
]


@pytest.mark.parametrize("name,text,key,message", CASES, ids=[c[0] for c in CASES])
def test_bad_study_is_refused_with_its_key(tmp_path, capsys, name, text, key, message):
    study = tmp_path / "study.toml"
    study.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["plan", str(study)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, f"expected one line, got: {err!r}"
    assert f"{study}: {key}:" in err, err
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_good_study_plans(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(GOOD)
    assert main(["plan", str(study)]) == 0
    assert "study t: 2 grid cells" in capsys.readouterr().out


def test_a_study_on_one_redefined_world_plans(tmp_path, capsys):
    # the demo's way: [data.world] redefined, so every default ("world") names the same world
    study = tmp_path / "study.toml"
    study.write_text(GOOD + '\n[data.world]\nkind = "world"\nn_kinds = 8\n')
    assert main(["plan", str(study)]) == 0
    # and a second world named explicitly everywhere it is used
    study.write_text(GOOD.replace("image_ratio = [0.1]", 'image_ratio = [0.1]\ntext_data = ["w8"]\n'
                                  'image_data = ["w8"]')
                     + '\n[data.w8]\nkind = "world"\nn_kinds = 8\n[finetune]\ndata = "w8"\n'
                       '[eval]\ndata = "w8"\n[encoder]\ndata = "w8"\n')
    assert main(["plan", str(study)]) == 0


def test_missing_study_file(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: <file>: no such file" in capsys.readouterr().err


def test_unimplemented_command_exits_2(tmp_path, capsys, monkeypatch):
    import sweep.cli as cli
    monkeypatch.setattr(cli, "_resolve", lambda spec: None)
    assert cli.main(["search", "x.toml", "--trials", "1"]) == 2
    assert "not implemented yet" in capsys.readouterr().err


def test_a_heldout_shard_option_resolves_against_the_study_file(tmp_path):
    from sweep.spec import load_study

    study = tmp_path / "study.toml"
    study.write_text(GOOD.replace('paths = ["shards/a.tar"]', 'paths = ["shards/a.tar"]\nheldout = "val/*.tar"'))
    assert load_study(study).data["shards"].option("heldout") == str((tmp_path / "val" / "*.tar").resolve())
