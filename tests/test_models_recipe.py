"""DCLM's open_lm recipe in the LM: QK-norm and the gain-only LayerNorm as open_lm defines them,
z-loss adding exactly coeff · mean(logsumexp²), the cosine cooling down to an absolute floor, a
tiny trunk trained with them finite and different from one without, and the paper presets
carrying the recipe (each a defect of issue 27 on the earlier tree)."""

from __future__ import annotations

import dataclasses
import math

import polars as pl
import pytest
import torch

import models.synthetic as syn
from models.accounting import param_counts
from models.config import LMConfig, TrainDefaults
from models.lm import Attention, DecoderLM, rope_tables
from models.presets import PRESETS
from models.run import run_step
from models.schedules import branch_schedule, trunk_schedule
from models.stages.lm import scored_losses
from models.stepfiles import step_dir
from models.steps import Step, TrunkConfig
from models.vlm import IGNORE, token_losses
from tests.models_helpers import LM, PRESET, SRC, one_thread  # noqa: F401  (autouse: one torch thread)

CFG = LMConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, ffn_hidden=48, max_seq_len=16,
               norm="layernorm", qk_norm=True)


def _gain_ln(v: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + eps) * w


def _attention_logits(attn: Attention, x: torch.Tensor, cfg: LMConfig) -> torch.Tensor:
    """open_lm's CustomAttn, longhand in float64: q/k normed over all heads, then split, then RoPE."""
    sd = {k: v.double() for k, v in attn.state_dict().items()}
    b, n, d = x.shape
    h, dh = cfg.n_heads, cfg.head_dim
    q = _gain_ln(x @ sd["wq.weight"].T, sd["q_norm.weight"], cfg.norm_eps).view(b, n, h, dh)
    k = _gain_ln(x @ sd["wk.weight"].T, sd["k_norm.weight"], cfg.norm_eps).view(b, n, h, dh)
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    rot = torch.polar(torch.ones(n, dh // 2, dtype=torch.float64),
                      torch.outer(torch.arange(n).double(), freqs))

    def rope(v):
        c = torch.view_as_complex(v.reshape(b, n, h, dh // 2, 2).contiguous())
        return torch.view_as_real(c * rot[None, :, None]).reshape(b, n, h, dh)

    return torch.einsum("bqhd,bkhd->bhqk", rope(q), rope(k)) / math.sqrt(dh)


def test_qk_norm_changes_the_attention_logits_as_open_lm_defines_them() -> None:
    torch.manual_seed(0)
    attn = Attention(CFG)
    with torch.no_grad():  # gains away from 1 so the test sees them
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, CFG.d_model)
    logits = _attention_logits(attn, x.double(), CFG)
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    att = logits.masked_fill(causal, float("-inf")).softmax(-1)
    v = (x.double() @ attn.wv.weight.double().T).view(2, 6, 4, 8)
    expected = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(2, 6, 32) @ attn.wo.weight.double().T
    cos, sin = rope_tables(CFG.head_dim, 6, CFG.rope_theta)
    torch.testing.assert_close(attn(x, cos, sin).double(), expected, rtol=1e-4, atol=1e-5)
    # The norm is what changes the logits: scaling the query projection leaves them as they were,
    # where without QK-norm it scales every logit.
    plain = Attention(dataclasses.replace(CFG, qk_norm=False))
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "_norm" not in k})
    with torch.no_grad():
        before_qk, before_plain = attn(x, cos, sin), plain(x, cos, sin)
        attn.wq.weight.mul_(10)
        plain.wq.weight.mul_(10)
        torch.testing.assert_close(attn(x, cos, sin), before_qk, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(plain(x, cos, sin), before_plain, atol=1e-3)


def test_qk_norm_and_layernorm_parameters_are_counted() -> None:
    for qk in (False, True):
        for norm in ("rmsnorm", "layernorm"):
            cfg = dataclasses.replace(CFG, qk_norm=qk, norm=norm)
            model = DecoderLM(cfg)
            assert model.param_groups()["non_embedding"] == param_counts(
                dataclasses.replace(PRESETS["debug"].model, lm=cfg))["non_embedding"]
    names = {n for n, _ in DecoderLM(CFG).named_parameters()}
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= names
    assert not any(n.endswith(".bias") for n in names)  # gain-only LayerNorm


def test_z_loss_adds_exactly_coeff_times_mean_lse_squared() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 4
    targets = torch.randint(0, 11, (3, 7))
    targets[0, :3] = IGNORE  # unscored positions carry neither loss nor z-loss
    kinds = torch.zeros_like(targets)
    total0, count0, _ = scored_losses(logits, targets, kinds)
    total, count, parts = scored_losses(logits, targets, kinds, 1e-2)
    scored = targets != IGNORE
    lse2 = torch.logsumexp(logits, -1)[scored].square()
    assert count == count0 == scored.sum()
    torch.testing.assert_close(total / count, total0 / count0 + 1e-2 * lse2.mean())
    torch.testing.assert_close(total0 / count0, token_losses(logits, targets)[scored].mean())
    torch.testing.assert_close(parts["z_loss"][0] / parts["z_loss"][1], 1e-2 * lse2.mean())


def _trunk(train: TrainDefaults, lm: LMConfig) -> Step:
    cfg = TrunkConfig(lm=lm, train=train, data=SRC, seed=0, tokens=6 * train.batch_size * train.seq_len)
    return Step(kind="trunk", config=cfg, meta={"checkpoint_fractions": [1.0]})


def _losses(root, step: Step) -> pl.DataFrame:
    m = pl.read_parquet(step_dir(root, "trunk", step.step_id) / "metrics.parquet")
    return m.filter(pl.col("name") == "train_loss").sort("step")["value"]


@pytest.mark.parametrize("option", ["qk_norm", "z_loss"])
def test_training_with_the_option_is_finite_and_differs_from_off(tmp_path, option: str) -> None:
    off = _trunk(PRESET.train, LM)
    on = (_trunk(PRESET.train, dataclasses.replace(LM, qk_norm=True)) if option == "qk_norm"
          else _trunk(dataclasses.replace(PRESET.train, z_loss=1e-2), LM))
    assert on.step_id != off.step_id
    run_step(off, tmp_path, data=syn)
    run_step(on, tmp_path, data=syn)
    a, b = _losses(tmp_path, off), _losses(tmp_path, on)
    assert b.is_finite().all() and len(a) == len(b) == 6
    assert (a - b).abs().max() > 1e-4
    if option == "z_loss":
        m = pl.read_parquet(step_dir(tmp_path, "trunk", on.step_id) / "metrics.parquet")
        assert (m.filter(pl.col("name") == "z_loss")["value"] > 0).all()


def test_the_cosine_cools_down_to_the_absolute_floor() -> None:
    train = TrainDefaults(lr=3e-3, warmup_steps=10, batch_size=4, seq_len=32, min_lr_ratio=0.0,
                          min_lr=3e-5)
    s = trunk_schedule(train, 100)
    assert s.lr_at(99) > 3e-5 and s.lr_at(100) == pytest.approx(3e-5)
    assert branch_schedule("rewarm", train, 50).lr_at(50) == pytest.approx(3e-5)
    # The larger of the two floors wins, so a study's min_lr_ratio still means what it says.
    assert dataclasses.replace(train, min_lr_ratio=0.1).floor_lr == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="min_lr"):
        dataclasses.replace(train, min_lr=1.0)


@pytest.mark.parametrize("name", ["79m", "154m", "411m", "1.4b"])
def test_paper_presets_carry_dclms_recipe(name: str) -> None:
    p = PRESETS[name]
    assert p.model.lm.qk_norm and p.model.lm.norm == "layernorm"
    assert p.train.z_loss == 1e-4 and p.train.floor_lr == 3e-5
    assert (p.train.weight_decay, p.train.beta1, p.train.beta2, p.train.grad_clip) == (0.033, 0.9, 0.95, 1.0)
    warmup = {"79m": 400, "154m": 400, "411m": 2000, "1.4b": 5000}[name]
    assert p.train.warmup_steps == warmup


def test_added_fields_at_their_default_leave_step_ids_alone() -> None:
    step = _trunk(PRESET.train, LM)
    ident = step.identity["config"]
    assert not {"norm", "qk_norm"} & set(ident["lm"]) and not {"min_lr", "z_loss"} & set(ident["train"])
    assert _trunk(dataclasses.replace(PRESET.train, z_loss=1e-4), LM).step_id != step.step_id
