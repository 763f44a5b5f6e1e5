"""The `hf` vision path: a tiny randomly initialised SigLIP saved to a local directory, loaded
frozen through VisionConfig(kind="hf"), spliced into the VLM, and run as a branch step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("transformers")
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

import models.synthetic as syn  # noqa: E402
from models.accounting import vision_out_width  # noqa: E402
from models.config import LMConfig, ProjectorConfig, VisionConfig  # noqa: E402
from models.run import run_step  # noqa: E402
from models.steps import Step  # noqa: E402
from models.vision import build_vision  # noqa: E402
from models.vlm import VLM  # noqa: E402
from tests.models_helpers import (  # noqa: E402
    branch_step,
    one_thread,  # noqa: F401  (autouse: one torch thread)
    trunk_step,
)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip")
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, image_size=16, patch_size=8)
    torch.manual_seed(0)
    SiglipVisionModel(cfg).save_pretrained(path)
    return path


def test_hf_encoder_matches_the_transformers_model_and_is_frozen(siglip_dir) -> None:
    cfg = VisionConfig(kind="hf", hf_path=str(siglip_dir), image_size=16, patch_size=8, frozen=True)
    encoder = build_vision(cfg)
    assert encoder.out_width == 32 == vision_out_width(cfg)
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)  # as the loader ships them
    reference = SiglipVisionModel.from_pretrained(siglip_dir).eval()
    # No preprocessor_config.json: mean 0, std 1, so the tower sees the rescaled pixels x/255.
    torch.testing.assert_close(encoder.eval()(images), reference(
        pixel_values=images.permute(0, 3, 1, 2).float() / 255).last_hidden_state)
    model = VLM(LMConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2), cfg, ProjectorConfig())
    tokens = torch.tensor([[2] * 4 + [9, 10], [2] * 4 + [11, 12]])
    logits = model(tokens, images, image_id=2)
    logits.sum().backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert model.projector[0].weight.grad is not None


def test_hf_encoder_rejects_a_mismatched_image_size_and_missing_dirs(siglip_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_vision(VisionConfig(kind="hf", hf_path=str(siglip_dir), image_size=32, patch_size=8))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_vision(VisionConfig(kind="hf", hf_path=str(tmp_path), image_size=16, patch_size=8))


def test_branch_step_with_a_frozen_hf_encoder(siglip_dir, tmp_path) -> None:
    trunk = trunk_step(4, fractions=(0.5,))
    run_step(trunk, tmp_path, data=syn)
    vision = VisionConfig(kind="hf", hf_path=str(siglip_dir), image_size=16, patch_size=8)
    base = branch_step(trunk, fraction=0.5)
    branch = Step(kind="branch", parents=base.parents,
                  config=dataclasses.replace(base.config, vision=vision))
    result = run_step(branch, tmp_path, data=syn)
    hf_params = sum(p.numel() for p in SiglipVisionModel.from_pretrained(siglip_dir).parameters())
    assert result["params"]["vision"] == hf_params
    assert result["params"]["projector"] == 32 * 32 + 32 + 32 * 32 + 32
