"""The decoder LM against a plain re-implementation of its maths, the VLM's image splicing, loss
masking, and every preset's parameter counts by group against models.accounting."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.accounting import param_counts
from models.config import LMConfig, ProjectorConfig, VisionConfig
from models.lm import DecoderLM
from models.presets import PRESETS
from models.vlm import IGNORE, VLM, masked_targets, part_means, split_losses, token_losses
from tests.models_helpers import one_thread  # noqa: F401  (autouse: one torch thread)

CFG = LMConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, ffn_hidden=48, max_seq_len=16)


def reference_forward(model: DecoderLM, tokens: torch.Tensor) -> torch.Tensor:
    """The same architecture written out longhand: explicit softmax attention, complex RoPE."""
    cfg, sd = model.config, {k: v.double() for k, v in model.state_dict().items()}
    x = sd["embed.weight"][tokens]
    b, n, d = x.shape
    h, dh = cfg.n_heads, cfg.head_dim
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    rot = torch.polar(torch.ones(n, dh // 2, dtype=torch.float64), torch.outer(torch.arange(n).double(), freqs))

    def rms(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rope(v):  # v [b, n, h, dh]: channel pairs (2i, 2i+1) as complex numbers
        c = torch.view_as_complex(v.reshape(b, n, h, dh // 2, 2).contiguous())
        return torch.view_as_real(c * rot[None, :, None]).reshape(b, n, h, dh)

    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        a = rms(x, sd[p + "attn_norm.weight"])
        q = rope((a @ sd[p + "attn.wq.weight"].T).view(b, n, h, dh))
        k = rope((a @ sd[p + "attn.wk.weight"].T).view(b, n, h, dh))
        v = (a @ sd[p + "attn.wv.weight"].T).view(b, n, h, dh)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
        att = scores.masked_fill(causal, float("-inf")).softmax(-1)
        out = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d)
        x = x + out @ sd[p + "attn.wo.weight"].T
        f = rms(x, sd[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(f @ sd[p + "ffn.w1.weight"].T)
        x = x + (gate * (f @ sd[p + "ffn.w3.weight"].T)) @ sd[p + "ffn.w2.weight"].T
    return rms(x, sd["norm.weight"]) @ sd["head.weight"].T


@pytest.mark.parametrize("tied", [False, True])
def test_lm_matches_reference_maths(tied: bool) -> None:
    torch.manual_seed(0)
    model = DecoderLM(dataclasses.replace(CFG, tie_embeddings=tied))
    with torch.no_grad():  # non-trivial norm weights so the test sees them
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    tokens = torch.randint(0, CFG.vocab_size, (3, 11))
    torch.testing.assert_close(model(tokens).double(), reference_forward(model, tokens),
                               rtol=1e-4, atol=1e-5)
    if tied:
        assert model.head.weight is model.embed.weight


def test_lm_is_causal_and_accepts_embeddings() -> None:
    torch.manual_seed(0)
    model = DecoderLM(CFG)
    tokens = torch.randint(0, CFG.vocab_size, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % CFG.vocab_size
    torch.testing.assert_close(model(tokens)[:, :6], model(changed)[:, :6])
    torch.testing.assert_close(model(embeds=model.embed(tokens)), model(tokens))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, CFG.max_seq_len + 1, dtype=torch.long))


def test_vlm_places_each_image_in_its_run_of_placeholders() -> None:
    torch.manual_seed(0)
    vision = VisionConfig(kind="patch", image_size=8, patch_size=4, width=16, frozen=False)
    model = VLM(CFG, vision, ProjectorConfig(kind="linear"))
    image_id, k = 3, vision.n_patches
    tokens = torch.tensor([[image_id] * k + [7, 8, 9, 10, 11, 12],
                           [5, 6] + [image_id] * k + [image_id] * k])
    images = torch.randn(3, 3, 8, 8)
    embeds = model.embed(tokens, images, image_id)
    feats = model.image_features(images)
    torch.testing.assert_close(embeds[0, :k], feats[0])
    torch.testing.assert_close(embeds[1, 2:2 + k], feats[1])
    torch.testing.assert_close(embeds[1, 2 + k:], feats[2])
    torch.testing.assert_close(embeds[0, k:], model.lm.embed(tokens[0, k:]))
    with pytest.raises(ValueError, match="image positions"):
        model.embed(tokens, images[:2], image_id)


def test_pixel_shuffle_folds_each_block_of_patches_into_one_token() -> None:
    from models.projector import PixelShuffle

    # a 4×4 grid whose patch features are their own row-major index
    grid = torch.arange(16, dtype=torch.float32).view(1, 16, 1)
    folded = PixelShuffle(2)(grid)
    assert folded.shape == (1, 4, 4)
    assert folded[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    with pytest.raises(ValueError, match="square patch grid"):
        PixelShuffle(3)(grid)
    with pytest.raises(ValueError, match="square patch grid"):
        PixelShuffle(2)(torch.zeros(1, 12, 1))
    vision = VisionConfig(kind="patch", image_size=16, patch_size=4, width=8, frozen=False)
    projector = ProjectorConfig(pixel_shuffle=2)
    assert projector.image_tokens(vision.n_patches) == 4
    model = VLM(CFG, vision, projector)
    image_id, images = 3, torch.randn(2, 3, 16, 16)
    tokens = torch.tensor([[image_id] * 4 + [7, 8], [5, 6] + [image_id] * 4])
    assert model(tokens, images, image_id).shape == (2, 6, CFG.vocab_size)
    with pytest.raises(ValueError, match="pixel_shuffle 3"):
        ProjectorConfig(pixel_shuffle=3).image_tokens(16)


def test_loss_masking_scores_text_only_and_splits_by_kind() -> None:
    image_id = 3
    tokens = torch.tensor([[3, 3, 7, 8], [9, 10, 11, 12]])
    targets = torch.tensor([[3, 7, 8, IGNORE], [10, 11, 12, 13]])
    kinds = torch.tensor([[-1, 1, 1, -1], [0, 0, 0, 0]])
    masked = masked_targets(tokens, targets, image_id, loss_on_image_positions=False)
    assert masked.tolist() == [[IGNORE, IGNORE, 8, IGNORE], [10, 11, 12, 13]]
    assert masked_targets(tokens, targets, image_id, True).tolist() == targets.tolist()
    logits = torch.randn(2, 4, 20)
    per = token_losses(logits, masked)
    assert per[0, 0] == 0 and per[0, 1] == 0
    total, parts = split_losses(per, masked, kinds)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 20), masked.view(-1), ignore_index=IGNORE)
    torch.testing.assert_close(total, ref)
    means = part_means(parts)
    assert means["caption_loss"] == pytest.approx(float(per[0, 2]))
    assert means["text_loss"] == pytest.approx(float(per[1].mean()))
    assert "instruction_loss" not in means  # no instruction positions in the batch
    assert parts["instruction_loss"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_with_accounted_parameter_counts(name: str) -> None:
    preset = PRESETS[name]
    cfg = preset.model
    with torch.device("meta"):
        model = VLM(cfg.lm, cfg.vision, cfg.projector)
    counts = model.param_counts()
    expected = param_counts(cfg)
    assert counts == expected, f"{name}: built {counts}, accounting says {expected}"
    # numel over unique parameters equals the sum of the groups (no double counting)
    assert sum(p.numel() for p in model.parameters()) == sum(
        counts[k] for k in ("embedding", "non_embedding", "vision", "projector"))


def test_patch_kind_and_tied_embeddings_match_accounting() -> None:
    vision = VisionConfig(kind="patch", image_size=16, patch_size=4, width=24, frozen=False)
    lm = dataclasses.replace(CFG, tie_embeddings=True)
    for projector in (ProjectorConfig(kind="linear"), ProjectorConfig(kind="mlp2", hidden=40),
                      ProjectorConfig(kind="mlp2", pixel_shuffle=2)):
        model = VLM(lm, vision, projector)
        from models.config import VLMConfig
        assert model.param_counts() == param_counts(VLMConfig(lm=lm, vision=vision, projector=projector))


def test_ddp_split_gives_each_rank_its_rows_and_their_images_padding_the_last() -> None:
    from models.stages.batches import split_rows

    image_id, k = 2, 2
    tokens = torch.tensor([[2, 2, 5, 6], [7, 8, 9, 10], [2, 2, 2, 2], [11, 2, 2, 12]])
    images = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 3, 1, 1)
    batch = {"tokens": tokens, "targets": tokens.clone(), "loss_kind": torch.zeros_like(tokens),
             "images": images, "skipped_records": 0}
    first = split_rows(batch, 0, 2, image_id, k)
    second = split_rows(batch, 1, 2, image_id, k)
    assert first["tokens"].tolist() == tokens[:2].tolist()
    assert first["images"][:, 0, 0, 0].tolist() == [0.0]
    assert second["images"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    # Over 3 ranks the 4 rows are padded to 6 with two rows that score nothing and hold no image.
    parts = [split_rows(batch, r, 3, image_id, k) for r in range(3)]
    assert [p["tokens"].shape[0] for p in parts] == [2, 2, 2]
    assert parts[1]["tokens"].tolist() == tokens[2:].tolist()
    assert parts[2]["tokens"].tolist() == [[0, 0, 0, 0]] * 2
    assert (parts[2]["targets"] == -100).all() and (parts[2]["loss_kind"] == -1).all()
    assert [p["images"].shape[0] for p in parts] == [1, 3, 0]
