"""`vlmsweep export --format hf`: transformers loads the exported LM offline and its logits equal
ours (fp32, CPU); the world's tokenizer encodes as ours does; lm-evaluation-harness's `hf` model
scores a local task on it; a study's cells export into one folder per step with an index; bad
input is one line, exit 2, nothing written."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import models.synthetic as syn  # noqa: E402
from models import checkpoint as ck  # noqa: E402
from models.data.tokenizer import world_tokenizer  # noqa: E402
from models.hf_export import rope_permutation  # noqa: E402
from models.run import run_step  # noqa: E402
from models.stages.eval_step import model_spec  # noqa: E402
from models.stepfiles import step_dir  # noqa: E402
from models.steps import DataSource, Step, TrunkConfig  # noqa: E402
from models.vlm import VLM  # noqa: E402
from sweep.cli import main  # noqa: E402
from sweep.plan import plan_study  # noqa: E402
from sweep.spec import load_study  # noqa: E402
from tests.models_helpers import PRESET, branch_step, one_thread  # noqa: E402, F401  (autouse)

WORLD = DataSource(name="world", kind="world", options=(("seed", 0),))


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """A trunk (the debug LM, world tokenizer) and a branch on it, trained a few steps."""
    root = tmp_path_factory.mktemp("steps")
    trunk = Step(kind="trunk", config=TrunkConfig(
        lm=PRESET.model.lm, train=PRESET.train, data=WORLD, seed=0,
        tokens=4 * PRESET.train.batch_size * PRESET.train.seq_len), meta={"checkpoint_fractions": [0.5]})
    branch = branch_step(trunk)
    for step in (trunk, branch):
        run_step(step, root, data=syn)
    return {"root": root, "trunk": trunk, "branch": branch}


def _ours(root: Path, step: Step) -> VLM:
    lm, vision, projector, _ = model_spec(root, step.kind, step.step_id)
    model = VLM(lm, vision, projector)
    model.load_state_dict(ck.load_torch(step_dir(root, step.kind, step.step_id) / "model.pt")["model"])
    return model.eval()


@pytest.mark.parametrize("kind", ["trunk", "branch"])
def test_transformers_loads_the_export_offline_and_its_logits_equal_ours(chain, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    step = chain[kind]
    out = tmp_path / "hf"
    assert main(["export", str(step_dir(chain["root"], kind, step.step_id)), "--format", "hf",
                 "--out", str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = _ours(chain["root"], step)
    tokens = torch.randint(0, ours.lm.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=tokens).logits, ours.lm(tokens), atol=1e-4, rtol=0)
    manifest = json.loads((out / "vlmsweep_export.json").read_text())
    assert manifest["step_id"] == step.step_id and manifest["kind"] == kind
    if kind == "branch":  # the encoder and projector beside the LM, in the documented layout
        from safetensors.torch import load_file

        projector = load_file(out / "projector" / "model.safetensors")
        torch.testing.assert_close(projector["linear_1.weight"], ours.projector[0].weight)
        torch.testing.assert_close(projector["linear_2.bias"], ours.projector[2].bias)
        vision = load_file(out / "vision" / "model.safetensors")
        assert vision.keys() == ours.vision.state_dict().keys()
        assert manifest["image_tokens"] == 4 and manifest["tokenizer"]["image_id"] == 2
    else:
        assert not (out / "vision").exists()


def test_an_hf_encoder_is_exported_as_its_own_transformers_folder(chain, tmp_path):
    """A SigLIP tower (unfrozen, so trained by the branch) comes out loadable by AutoModel, with
    the weights the branch left and the source's preprocessor."""
    from transformers import AutoModel, SiglipVisionConfig, SiglipVisionModel

    source = tmp_path / "siglip"
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=16, patch_size=8)).save_pretrained(source)
    (source / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    base = branch_step(chain["trunk"])
    vision = dataclasses.replace(base.config.vision, kind="hf", hf_path=str(source), frozen=False)
    branch = Step(kind="branch", parents=base.parents, config=dataclasses.replace(base.config, vision=vision))
    root = tmp_path / "root"
    shutil.copytree(chain["root"] / "steps" / "trunk", root / "steps" / "trunk")
    run_step(branch, root, data=syn)
    out = tmp_path / "hf"
    assert main(["export", str(step_dir(root, "branch", branch.step_id)), "--out", str(out)]) == 0
    exported = AutoModel.from_pretrained(out / "vision", local_files_only=True)
    trained = _ours(root, branch).vision.model.state_dict()
    initial = SiglipVisionModel.from_pretrained(source).state_dict()
    exported_state = getattr(exported, "vision_model", exported).state_dict()
    assert exported_state.keys() == trained.keys()
    for name, value in exported_state.items():
        torch.testing.assert_close(value, trained[name])
    assert any(not torch.equal(trained[k], v) for k, v in initial.items() if k in trained)
    assert (out / "vision" / "preprocessor_config.json").is_file()


def test_the_rope_permutation_is_what_makes_the_logits_equal(chain, tmp_path):
    """Without the q/k row permutation the logits differ: the layouts really do differ."""
    from models.hf_export import llama_state

    ours = _ours(chain["root"], chain["trunk"])
    out = tmp_path / "hf"
    assert main(["export", str(step_dir(chain["root"], "trunk", chain["trunk"].step_id)), "--out", str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    state = llama_state(ours.state_dict(), ours.lm.config)
    inverse = torch.argsort(torch.tensor(rope_permutation(ours.lm.config.head_dim)))
    for name in ("q_proj", "k_proj"):  # undo the permutation in the loaded model
        w = state[f"model.layers.0.self_attn.{name}.weight"]
        unpermuted = w.view(ours.lm.config.n_heads, -1, w.shape[1])[:, inverse].reshape(w.shape)
        hf.model.layers[0].self_attn.get_submodule(name).weight.data = unpermuted
    tokens = torch.arange(40).unsqueeze(0)
    with torch.no_grad():
        assert (hf(input_ids=tokens).logits - ours.lm(tokens)).abs().max() > 1e-3


def test_the_exported_tokenizer_encodes_as_the_worlds_tokenizer(chain, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(step_dir(chain["root"], "trunk", chain["trunk"].step_id)), "--out", str(out)]) == 0
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ours = world_tokenizer()
    text = " ".join(ours.itos[6:40]) + ", and " + " ".join(ours.itos[200:230]) + "."
    assert hf_tok(text).input_ids == ours.encode(text)
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (ours.eos_id, ours.pad_id)


def test_a_studys_own_tokenizer_and_tied_embeddings_export(tmp_path):
    """A tokenizer.json without our specials gets them at the ids training used; a tied LM
    exports as tie_word_embeddings with equal logits."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from models.data.tokenizer import HFTokenizer

    words = ["<|endoftext|>", "<|padding|>"] + [f"w{i}" for i in range(60)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|padding|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "tokenizer.json"
    backend.save(str(path))
    source = DataSource(name="shards", kind="jsonl", paths=("unused.jsonl",), options=(("tokenizer", str(path)),))
    lm = dataclasses.replace(PRESET.model.lm, tie_embeddings=True)
    trunk = Step(kind="trunk", config=TrunkConfig(lm=lm, train=PRESET.train, data=source, seed=0,
                                                  tokens=2 * PRESET.train.batch_size * PRESET.train.seq_len))
    root = tmp_path / "root"
    run_step(trunk, root, data=syn)  # the synthetic batches; the config names the tokenizer
    out = tmp_path / "hf"
    assert main(["export", str(step_dir(root, "trunk", trunk.step_id)), "--out", str(out)]) == 0
    ours, hf_tok = HFTokenizer(path), AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "w3 w17 w59 <image> w0"
    assert hf_tok(text).input_ids == [3 + 2, 17 + 2, 59 + 2, ours.image_id, 2]
    assert hf_tok.convert_tokens_to_ids(["<image>", "<user>", "<assistant>"]) == [
        ours.image_id, ours.user_id, ours.assistant_id]
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings
    tokens = torch.arange(30).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=tokens).logits, _ours(root, trunk).lm(tokens), atol=1e-4, rtol=0)


@pytest.mark.slow  # lm-evaluation-harness's imports and task set-up: 10–40 s
def test_lm_evaluation_harness_scores_a_local_task_on_the_export(chain, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    out = tmp_path / "hf"
    assert main(["export", str(step_dir(chain["root"], "trunk", chain["trunk"].step_id)), "--out", str(out)]) == 0
    words = world_tokenizer().itos[6:]
    rows = [{"question": f"{words[i]} {words[i + 1]}", "choices": [words[i + 2], words[i + 3]], "answer": i % 2}
            for i in range(0, 40, 4)]
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "world_pick.yaml").write_text(
        "task: world_pick\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n")
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={out},dtype=float32,device=cpu", tasks=["world_pick"],
        task_manager=TaskManager(include_path=str(tasks)), batch_size=4)
    acc = results["results"]["world_pick"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and results["n-samples"]["world_pick"]["effective"] == len(rows)


STUDY = """
[study]
name = "tiny"
root = "runs"
[axes]
scale = ["debug"]
intro_fraction = [0.5, 1.0]
image_ratio = [0.2]
[model.vision]
pretrain = false
[train]
trunk_tokens_per_param = 0.05
image_tokens_per_param = 0.02
"""


def test_a_studys_cells_export_one_folder_per_step_with_an_index(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(STUDY)
    plan = plan_study(load_study(path))
    for step in plan.steps:
        if step.kind in ("trunk", "branch"):
            run_step(step, plan.root, data=syn)
    out = tmp_path / "hf"
    assert main(["export", str(path), "--cells", "intro_fraction=0.5", "--kind", "branch", "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    (cell,) = [c for c in plan.cells if c.intro_fraction == 0.5]
    assert [s["step_id"] for s in index["steps"]] == [plan.cells[cell]["branch"]]
    assert index["steps"][0]["cells"] == [cell.as_dict()]
    assert (out / plan.cells[cell]["branch"] / "model.safetensors").is_file()
    capsys.readouterr()
    # the trunk is shared by both cells: exported once, listing both
    assert main(["export", str(path), "--kind", "trunk", "--out", str(tmp_path / "trunks")]) == 0
    (trunk,) = json.loads((tmp_path / "trunks" / "index.json").read_text())["steps"]
    assert len(trunk["cells"]) == 2
    # a cell whose fine-tune has not run: one line, exit 2, nothing written
    assert main(["export", str(path), "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not done" in err and "result.json" in err
    assert not (tmp_path / "ft").exists() and not list(tmp_path.glob(".ft.*"))


@pytest.mark.parametrize("case, message", [
    ("unknown", "not a step directory"),
    ("unfinished", "is not done"),
    ("eval", "has no language model"),
    ("exists", "already exists"),
    ("cells", "not on the study's intro_fraction axis"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(chain, tmp_path, capsys, case, message):
    root, trunk = chain["root"], chain["trunk"]
    target = step_dir(root, "trunk", trunk.step_id)
    out = tmp_path / "hf"
    argv = ["export", str(target), "--out", str(out)]
    if case == "unknown":
        (tmp_path / "0123456789ab").mkdir()  # a folder that is no step directory
        argv[1] = str(tmp_path / "0123456789ab")
    elif case == "unfinished":
        copy = tmp_path / "r" / "steps" / "trunk" / trunk.step_id
        shutil.copytree(target, copy)
        (copy / "result.json").unlink()
        argv[1] = str(copy)
    elif case == "eval":
        fake = tmp_path / "r" / "steps" / "eval" / "abc"
        fake.mkdir(parents=True)
        (fake / "config.json").write_text("{}")
        argv[1] = str(fake)
    elif case == "exists":
        out.mkdir()
    else:
        path = tmp_path / "s.toml"
        path.write_text(STUDY)
        argv = ["export", str(path), "--cells", "intro_fraction=0.3", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert out.exists() == (case == "exists") and not list(tmp_path.glob(".hf.*"))
