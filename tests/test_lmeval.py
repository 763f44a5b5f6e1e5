"""Text evals through lm-evaluation-harness: parity with the project's scorer, the LM class, offline.

ARC-Easy, HellaSwag and PIQA fixtures are written in their published layouts; `vlmsweep convert`
turns them into the project's eval files. Three scorers must agree to 1e-6 on acc and acc_norm,
zero-shot and few-shot: the project's (`models.evaluate`), lm-eval over the converted files (the
eval step's `text_harness = "lm-eval"` path) and lm-eval's own task definitions (its shipped YAMLs)
over the published files. The model is the debug preset's LM on a tiny BPE tokenizer trained here.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("tokenizers")

from models.data.convert import convert  # noqa: E402
from models.data.evaltasks import file_tasks  # noqa: E402
from models.data.fewshot import with_fewshot  # noqa: E402
from models.data.tokenizer import HFTokenizer  # noqa: E402
from models.evaluate import batched_choice_scores, evaluate, greedy_decode  # noqa: E402
from models.harness.run import lm_eval_rows, packaged_task, run_tasks  # noqa: E402
from models.presets import get_preset  # noqa: E402
from models.steps import DataSource  # noqa: E402
from models.vlm import VLM  # noqa: E402

WORDS = ("the a cat dog red blue runs jumps over under water fire stone glass cup bowl hand knife cut "
         "pour heat cool open close man woman child ball kicks throws paper wood metal soft hard warm "
         "cold quickly slowly then after before into onto").split()
N_ITEMS = 12


def _phrase(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def published_fixtures(folder, split: str, seed: int) -> dict[str, str]:
    """Small ARC-Easy (Hugging Face layout), HellaSwag and PIQA files of one split, distinct choices."""
    rng = random.Random(seed)
    folder.mkdir(exist_ok=True)

    def distinct(k, lo, hi):
        out: list[str] = []
        while len(out) < k:
            p = _phrase(rng, lo, hi)
            out += [p] if p not in out else []
        return out

    arc = [{"id": f"q{i}", "question": _phrase(rng, 3, 7).capitalize() + "?",
            "choices": {"text": distinct(4, 1, 4), "label": list("ABCD")}, "answerKey": rng.choice("ABCD")}
           for i in range(N_ITEMS)]
    hellaswag = [{"ind": i, "activity_label": _phrase(rng, 1, 2).title(),
                  "ctx_a": _phrase(rng, 4, 8) + (" [title] " + _phrase(rng, 1, 3) if i % 3 == 0 else "") + ".",
                  "ctx_b": _phrase(rng, 1, 3), "endings": [e + "." for e in distinct(4, 2, 6)],
                  "label": str(rng.randrange(4)), "split": split, "source_id": f"s{i}"} for i in range(N_ITEMS)]
    piqa = [{"goal": _phrase(rng, 3, 6).capitalize() + ".", "sol1": s1, "sol2": s2, "label": rng.randrange(2)}
            for s1, s2 in (distinct(2, 2, 7) for _ in range(N_ITEMS))]
    return {"arc_easy": _write(folder / f"ARC-Easy-{split}.jsonl", arc),
            "hellaswag": _write(folder / f"hellaswag_{split}.jsonl", hellaswag),
            "piqa": _write(folder / f"piqa_{split}.jsonl", piqa)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tmp = tmp_path_factory.mktemp("lmeval")
    published = published_fixtures(tmp / "published", "val", seed=7)
    train = published_fixtures(tmp / "published", "train", seed=8)
    converted = {}
    for name, fmt in (("arc_easy", "arc"), ("hellaswag", "hellaswag"), ("piqa", "piqa")):
        converted[name] = str(tmp / f"{name}.jsonl")
        convert(fmt, converted[name], file=published[name])
        convert(fmt, tmp / "fewshot" / f"{name}.jsonl", file=train[name])  # the source's fewshot folder
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [line for p in (*published.values(), *train.values()) for line in open(p)] + [" ".join(WORDS)]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp / "tokenizer.json"))
    tok = HFTokenizer(tmp / "tokenizer.json")
    lm = dataclasses.replace(get_preset("debug").model.lm, vocab_size=tok.vocab_size, max_seq_len=1024)
    torch.manual_seed(0)
    model = VLM(lm, None, None).eval()
    with torch.no_grad():  # sharper than the initial near-uniform guesses: context moves the scores
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.4)
    kw = dict(groups=("text",), tasks=(), n_per_task=0, image_size=32, image_tokens=0, seed=0)
    source = DataSource(name="text", kind="mc_jsonl", paths=tuple(converted.values()))
    with_train = dataclasses.replace(source, options=(("fewshot", str(tmp / "fewshot")),))
    return dict(tmp=tmp, published=published, train=train, tok=tok, model=model,
                tasks={t.name: t for t in file_tasks(source, tok, **kw)},
                with_train={t.name: t for t in file_tasks(with_train, tok, **kw)})


def _values(rows) -> dict[tuple[str, str], float]:
    return {(r["task"], r["metric"]): r["value"] for r in rows}


def _project(setup, k: int, pool: str = "tasks", batch: int = 5) -> dict[tuple[str, str], float]:
    tok = setup["tok"]
    tasks = [with_fewshot(t, k, tok) for t in setup[pool].values()]
    return _values(evaluate(setup["model"], tasks, image_id=tok.image_id, image_tokens=0, eos_id=tok.eos_id,
                            decode=tok.decode, batch_size=batch))


@pytest.mark.parametrize("k,pool", [(0, "tasks"), (3, "tasks"), (3, "with_train")])
def test_acc_and_acc_norm_agree_across_the_project_lm_eval_and_lm_eval_s_own_tasks(setup, tmp_path, k, pool):
    """Few-shot examples from the asked task's other items, or from its training split."""
    from models.harness.lm import VLMSweepLM

    ours = _project(setup, k, pool)
    harness = _values(lm_eval_rows(setup["model"], setup["tok"], list(setup[pool].values()),
                                   workdir=tmp_path / "h", num_fewshot={n: k for n in setup[pool]},
                                   batch_size=7))
    train = setup["train"] if pool == "with_train" else {}
    own = {name: packaged_task(name, path, k, tmp_path / "cache", train.get(name))
           for name, path in setup["published"].items()}
    results = run_tasks(VLMSweepLM(setup["model"], setup["tok"], batch_size=3), own)["results"]
    upstream = {(n, m): results[n][f"{m},none"] for n in own for m in ("acc", "acc_norm")}
    assert set(ours) == set(harness) == set(upstream) and len(ours) == 6
    for key in ours:
        assert ours[key] == pytest.approx(harness[key], abs=1e-6), key
        assert ours[key] == pytest.approx(upstream[key], abs=1e-6), key
    # a random model is not at one score everywhere: the comparison has something to compare
    assert len({round(v, 6) for v in ours.values()}) > 2


def test_few_shot_changes_the_prompts_it_is_given(setup):
    """k examples, each `prompt answer\\n\\n`, none of them the asked item, then the prompt."""
    task = setup["tasks"]["piqa"]
    shot = with_fewshot(task, 3, setup["tok"])
    for item, asked in zip(task.items, shot.items):
        parts = asked.prompt_text.split("\n\n")
        assert len(parts) == 4 and parts[-1] == item.prompt_text
        assert all(not p.startswith(item.prompt_text + " ") for p in parts[:-1])
        assert asked.prompt_tokens == setup["tok"].encode(asked.prompt_text)
    # with a training split, the examples are its items
    pool = setup["with_train"]["piqa"].fewshot_pool
    assert len(pool) == N_ITEMS and not {p.prompt_text for p in pool} & {it.prompt_text for it in task.items}
    for asked in with_fewshot(setup["with_train"]["piqa"], 3, setup["tok"]).items:
        shots = asked.prompt_text.split("\n\n")[:-1]
        assert all(any(s == p.prompt_text + " " + p.choice_texts[p.label] for p in pool) for s in shots)
    tok = setup["tok"]
    scores = [batched_choice_scores(setup["model"], t.items, image_id=tok.image_id, image_tokens=0, pad=tok.eos_id,
                                    batch_size=8) for t in (task, shot)]
    assert all(a != pytest.approx(b, abs=1e-3) for a, b in zip(*scores))


@torch.no_grad()
def test_the_lm_class_batches_like_one_at_a_time_and_rolls_and_generates(setup):
    from lm_eval.api.instance import Instance

    from models.harness.lm import VLMSweepLM

    def req(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    pairs = [("Question: cat runs?\nAnswer:", " the dog"), ("", " water"), ("hand cut ", "paper"),
             ("a b c d", " e f g h")]
    one = VLMSweepLM(setup["model"], setup["tok"], batch_size=1)
    many = VLMSweepLM(setup["model"], setup["tok"], batch_size=4)
    a = one.loglikelihood([req("loglikelihood", p) for p in pairs])
    b = many.loglikelihood([req("loglikelihood", p) for p in pairs])
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-5)
    # a continuation's log-probability summed from the model directly
    tok, model = setup["tok"], setup["model"]
    ctx, cont = tok.encode("hand cut"), tok.encode("hand cut paper")[len(tok.encode("hand cut")):]
    logp = torch.log_softmax(model(torch.tensor([ctx + cont[:-1]]), None, tok.image_id)[0].float(), -1)
    direct = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
    assert a[2][0] == pytest.approx(direct, abs=1e-5)
    # rolling: disjoint windows of a short window size sum to the whole text's log-likelihood
    text = " ".join(WORDS[:40])
    whole = many.loglikelihood_rolling([req("loglikelihood_rolling", (text,))])[0]
    many.max_length = 8
    windowed = many.loglikelihood_rolling([req("loglikelihood_rolling", (text,))])[0]
    many.max_length = model.lm.config.max_seq_len
    ids = [tok.eos_id] + tok.encode(text)
    logp = torch.log_softmax(model(torch.tensor([ids[:-1]]), None, tok.image_id)[0].float(), -1)
    assert whole == pytest.approx(sum(float(logp[i, t]) for i, t in enumerate(ids[1:])), abs=1e-4)
    assert windowed != pytest.approx(whole, abs=1e-4)  # shorter windows see less context
    # generation: greedy, at most max_gen_toks tokens, cut at the stop string, batched = one at a time
    gens = [("the cat", {"until": ["zzz"], "max_gen_toks": 5}), ("water fire", {"max_gen_toks": 3})]
    g1 = one.generate_until([req("generate_until", g) for g in gens])
    g4 = many.generate_until([req("generate_until", g) for g in gens])
    assert g1 == g4 and all(isinstance(t, str) for t in g1)
    reference = greedy_decode(model, tok.encode("the cat"), None, tok.image_id, 5, tok.eos_id)
    assert g1[0] == tok.decode(reference) and len(reference) <= 5
    stop = g1[0][len(g1[0]) // 2:] or "x"
    cut = one.generate_until([req("generate_until", ("the cat", {"until": [stop], "max_gen_toks": 5}))])[0]
    assert stop not in cut and g1[0].startswith(cut)


def test_registered_by_name_and_runs_through_simple_evaluate(setup, tmp_path):
    from lm_eval.api.registry import get_model
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from models.harness.lm import VLMSweepLM
    from models.harness.run import build_tasks, offline

    assert get_model("vlmsweep") is VLMSweepLM
    with offline():
        built = build_tasks([setup["tasks"]["piqa"]], tmp_path, {})
        out = simple_evaluate(model="vlmsweep", model_args={"model": setup["model"], "tokenizer": setup["tok"]},
                              tasks=list(built.values()), bootstrap_iters=0, log_samples=False,
                              task_manager=TaskManager(include_defaults=False))
    assert out["results"]["piqa"]["acc,none"] == pytest.approx(_project(setup, 0)[("piqa", "acc")], abs=1e-6)


def test_nothing_reaches_the_network(setup, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rows = lm_eval_rows(setup["model"], setup["tok"], [setup["tasks"]["arc_easy"]], workdir=tmp_path,
                        num_fewshot={"arc_easy": 2})
    assert [r["metric"] for r in rows] == ["acc", "acc_norm"] and rows[0]["n"] == N_ITEMS
    import os
    assert "HF_DATASETS_OFFLINE" not in os.environ  # restored after the run
