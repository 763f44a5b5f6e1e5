"""Evaluation scoring on hand-made cases: answer normalisation, multiple-choice log-likelihoods
against a direct computation, and accuracy rows from a model whose predictions are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import models.evaluate as evaluate_mod
from models.config import LMConfig
from models.evaluate import choice_logprobs, evaluate, greedy_decode
from models.synthetic import EvalItem, EvalTask
from models.vlm import VLM
from tests.models_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

V = 16


class Successor(nn.Module):
    """A real module whose next-token distribution puts 90% on (last token + 1) mod V."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives evaluate() a device
        self.lm = type("LM", (), {"config": LMConfig(vocab_size=V, d_model=8, n_layers=1,
                                                     n_heads=2, max_seq_len=32)})()

    def forward(self, tokens: torch.Tensor, images=None, image_id: int = -1) -> torch.Tensor:
        probs = torch.full((*tokens.shape, V), 0.1 / (V - 1))
        probs.scatter_(-1, ((tokens + 1) % V).unsqueeze(-1), 0.9)
        return probs.log() + self.anchor


def test_choice_logprobs_sum_the_choice_tokens_given_the_prompt() -> None:
    torch.manual_seed(0)
    model = VLM(LMConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2))
    prompt, choices = [1, 2, 3], [[4], [5, 6, 7]]
    scores = choice_logprobs(model, prompt, choices, None, image_id=-1)
    for choice, score in zip(choices, scores):
        seq = torch.tensor([prompt + choice])
        logp = torch.log_softmax(model(seq), -1)[0].detach()
        direct = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(choice))
        assert score == pytest.approx(direct, abs=1e-5)


def test_accuracy_rows_from_a_model_with_known_predictions() -> None:
    mc = EvalTask(name="mc", group="text", chance=0.5, kind="multiple_choice", items=[
        EvalItem(prompt_tokens=[3, 4], image=None, choices=[[5, 6], [7, 8]], label=0),  # right
        EvalItem(prompt_tokens=[3, 4], image=None, choices=[[9], [5]], label=0),  # wrong
        # acc (summed log-likelihood) takes the one-token choice (-5.0 against -10.1); acc_norm
        # (per unit of length: tokens here, as the items carry no choice texts) the long one
        EvalItem(prompt_tokens=[9], image=None, choices=[[11], [10, 5, 5]], label=1)])
    gen = EvalTask(name="vqa", group="vl", chance=0.0, kind="generate", items=[
        EvalItem(prompt_tokens=[2, 2, 1], image=np.zeros((3, 4, 4), np.float32),
                 answers=["2 3."], max_new_tokens=2),  # placeholders re-laid: 2 2 1 → 2 3
        EvalItem(prompt_tokens=[5], image=None, answers=["6"], max_new_tokens=3),  # 6 7 8 ≠ 6
        EvalItem(prompt_tokens=[13], image=None, answers=["14"], max_new_tokens=3)])  # stops at eos 15
    rows = evaluate(Successor(), [mc, gen], image_id=0, image_tokens=1, eos_id=15,
                    decode=lambda ids: " ".join(map(str, ids)))
    common = {"task": "mc", "group": "text", "chance": 0.5, "n": 3}
    assert rows == [
        common | {"metric": "acc", "value": 1 / 3, "primary_metric": True},
        common | {"metric": "acc_norm", "value": 2 / 3, "primary_metric": False},
        {"task": "vqa", "group": "vl", "metric": "exact_match", "value": 2 / 3, "chance": 0.0, "n": 3,
         "primary_metric": True}]
    chosen = evaluate(Successor(), [mc], image_id=0, image_tokens=1, eos_id=15, decode=str,
                      stable_metric={"mc": "acc_norm"})
    assert [r["metric"] for r in chosen if r["primary_metric"]] == ["acc_norm"]


def test_greedy_decode_stops_at_eos_and_max_tokens() -> None:
    model = Successor()
    assert greedy_decode(model, [3], None, 0, 4, eos_id=15) == [4, 5, 6, 7]
    assert greedy_decode(model, [12], None, 0, 9, eos_id=15) == [13, 14]


def test_generation_stops_at_a_stop_id_like_the_next_user_turn() -> None:
    """Regression: an instruction-tuned model ends an answer by opening the next `<user>` turn;
    without stopping there, "1 <user> <user>" never matched "1" and counting read 0.00."""
    model = Successor()
    assert greedy_decode(model, [3], None, 0, 4, eos_id=15, stop_ids=(5,)) == [4]
    gen = EvalTask(name="count", group="vl", chance=0.0, kind="generate", items=[
        EvalItem(prompt_tokens=[3], image=None, answers=["4"], max_new_tokens=4)])
    kw = dict(image_id=0, image_tokens=1, eos_id=15, decode=lambda ids: " ".join(map(str, ids)))
    assert evaluate(model, [gen], **kw)[0]["value"] == 0.0  # decodes "4 5 6 7"
    assert evaluate(model, [gen], stop_ids=(5,), **kw)[0]["value"] == 1.0
    out = evaluate_mod.batched_greedy(model, gen.items, image_id=0, image_tokens=1, eos_id=15,
                                      pad=15, batch_size=4, stop_ids=(5,))
    assert out == [[4]]


def test_batched_evaluation_equals_item_by_item_on_the_world() -> None:
    """Right-padded batches (several per task, mixed lengths, images) score exactly like one item
    at a time: the same choice log-likelihoods, the same greedy outputs, the same accuracy."""
    import models.data as data
    from models.presets import get_preset
    from models.steps import DataSource

    debug = get_preset("debug").model
    tok = data.get_tokenizer(DataSource(name="world", kind="world"))
    vision = debug.vision
    tasks = data.eval_tasks(DataSource(name="world", kind="world"), tok, groups=("vl", "text"),
                            n_per_task=5, image_size=vision.image_size, seed=0,
                            image_tokens=vision.n_patches)
    assert {t.kind for t in tasks} == {"multiple_choice", "generate"}
    torch.manual_seed(0)
    model = VLM(debug.lm, vision).eval()
    kw = dict(image_id=tok.image_id, image_tokens=vision.n_patches, eos_id=tok.eos_id,
              decode=tok.decode)
    for task in tasks:
        for item in task.items:
            prompt = [tok.image_id] * vision.n_patches if item.image is not None else []
            prompt += [t for t in item.prompt_tokens if t != tok.image_id]
            image = None if item.image is None else torch.as_tensor(item.image).unsqueeze(0)
            if task.kind == "multiple_choice":
                ref = choice_logprobs(model, prompt, item.choices, image, tok.image_id)
                got = evaluate_mod.batched_choice_scores(
                    model, [item], image_id=tok.image_id, image_tokens=vision.n_patches,
                    pad=tok.eos_id, batch_size=2)[0]
                np.testing.assert_allclose(got, ref, atol=1e-4)
            else:
                ref = greedy_decode(model, prompt, image, tok.image_id, item.max_new_tokens, tok.eos_id)
                got = evaluate_mod.batched_greedy(
                    model, [item], image_id=tok.image_id, image_tokens=vision.n_patches,
                    eos_id=tok.eos_id, pad=tok.eos_id, batch_size=1)[0]
                assert got == ref
    assert evaluate(model, tasks, batch_size=7, **kw) == evaluate(model, tasks, batch_size=1, **kw)
