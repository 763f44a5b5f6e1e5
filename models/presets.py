"""The one registry of named model presets, by size.

`debug` runs a step in a second or two; `170k` … `20m` are CPU sizes for the built-in world
(its word-level vocabulary fits in 512 rows); `79m` and `1.4b` are the paper's scales, `154m` and
`411m` extra rungs for prediction, all with open_lm's shapes, DCLM's recipe (QK-norm, z-loss, gain-only
LayerNorm, cosine to 3e-5) and the GPT-NeoX vocabulary (50432), which the names count with untied
embeddings.
Names are what study files use; `get_preset` names the known ones when a name is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.accounting import param_counts
from models.config import LMConfig, ProjectorConfig, TrainDefaults, VisionConfig, VLMConfig

WORLD_VOCAB = 512  # rows reserved for the built-in world's tokenizer (models.data.tokenizer)
NEOX_VOCAB = 50_432  # the GPT-NeoX tokenizer the paper (and open_lm) train with


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    """A named model and its optimisation defaults."""

    name: str
    model: VLMConfig
    train: TrainDefaults
    description: str

    @property
    def params(self) -> dict[str, int | None]:
        return param_counts(self.model)


def _world_vision(width: int, n_layers: int, n_heads: int) -> VisionConfig:
    # 32×32 images in 8×8 patches: a 4×4 grid, folded 2×2 by the projector's pixel shuffle into
    # 4 image tokens, one per cell of the world's 2×2 scenes (see _WORLD_PROJECTOR).
    return VisionConfig(kind="vit", image_size=32, patch_size=8, width=width, n_layers=n_layers,
                        n_heads=n_heads, frozen=True, pretrain=True)


# Pixel shuffle 2 (nanoVLM / Idefics3): in the 1m demo it lifted caption matching 0.42 → 0.49
# and attribute VQA 0.37 → 0.41 over 16 unshuffled tokens, and an image costs 4 positions, not 16.
_WORLD_PROJECTOR = ProjectorConfig(kind="mlp2", pixel_shuffle=2)


def _world(name: str, d: int, layers: int, heads: int, ffn: int, vision: VisionConfig,
           lr: float, warmup: int, batch: int, seq: int, description: str) -> Preset:
    lm = LMConfig(vocab_size=WORLD_VOCAB, d_model=d, n_layers=layers, n_heads=heads,
                  ffn_hidden=ffn, max_seq_len=512)
    return Preset(name=name, model=VLMConfig(lm=lm, vision=vision, projector=_WORLD_PROJECTOR),
                  train=TrainDefaults(lr=lr, warmup_steps=warmup, batch_size=batch, seq_len=seq),
                  description=description)


# The paper's SigLIP is loaded from disk (vision kind "hf" in a study); the presets carry a
# SigLIP-B/16-shaped ViT so that their vision parameter counts are known without the files.
_SIGLIP_B16 = VisionConfig(kind="vit", image_size=224, patch_size=16, width=768, n_layers=12,
                           n_heads=12, mlp_dim=3072, frozen=True, pretrain=False)


# The recipe DCLM trains these sizes with (its open_lm configs), shared by every paper preset:
# norm, QK-norm, z-loss, cosine cooldown end, weight decay, betas, clip. docs/model-recipe.md lists
# each value with its source and where a preset differs on purpose. Sources, by short name:
#   dclm/params:  mlfoundations/dclm training/params.py (the open_lm arguments DCLM passes)
#   dclm/hparams: mlfoundations/dclm training/hyperparameters.py (defaults of every DCLM config)
#   open_lm:      mlfoundations/open_lm open_lm/params.py and open_lm/model.py (argument defaults)
_DCLM_RECIPE = {
    "norm": "layernorm",  # gain_only_lp_layer_norm: dclm/hparams `norm`, passed as --model-norm
    "qk_norm": True,  # every DCLM / scaling config: "qk_norm": true → --qk-norm
    "norm_eps": 1e-5,  # open_lm Params.norm_eps
}
_DCLM_TRAIN = {
    "min_lr_ratio": 0.0,  # no ratio floor: the cosine cools down to min_lr
    "min_lr": 3e-5,  # "cd": 3e-05 in every config → --lr-cooldown-end
    "z_loss": 1e-4,  # "z_loss": 1e-4 in every config → --z-loss
    "weight_decay": 0.033,  # "wd": 0.033 in every config
    "beta1": 0.9,  # open_lm --beta1 default (DCLM leaves it)
    "beta2": 0.95,  # dclm/params: --beta2 0.95
    "grad_clip": 1.0,  # dclm/params: --grad-clip-norm 1
}


def _paper(name: str, d: int, layers: int, heads: int, lr: float, warmup: int, batch: int,
           description: str) -> Preset:
    lm = LMConfig(vocab_size=NEOX_VOCAB, d_model=d, n_layers=layers, n_heads=heads,
                  max_seq_len=2048, **_DCLM_RECIPE)
    return Preset(name=name, model=VLMConfig(lm=lm, vision=_SIGLIP_B16),
                  train=TrainDefaults(lr=lr, warmup_steps=warmup, batch_size=batch, seq_len=2048,
                                      image_seq_len=1024, **_DCLM_TRAIN),
                  description=description)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    _world("debug", 32, 1, 2, 96, _world_vision(32, 1, 2), 3e-3, 2, 4, 32,
           "smoke tests: a step runs in a second or two"),
    _world("170k", 64, 2, 4, 192, _world_vision(48, 1, 4), 3e-3, 20, 16, 64,
           "the smallest built-in-world model that learns the world's facts"),
    _world("1m", 128, 4, 4, 384, _world_vision(64, 2, 4), 3e-3, 40, 16, 64,
           "CPU demo scale"),
    _world("5m", 256, 6, 8, 768, _world_vision(96, 2, 4), 2e-3, 80, 32, 128,
           "CPU scale; minutes per trunk on a laptop"),
    _world("20m", 384, 10, 8, 1024, _world_vision(128, 3, 4), 1e-3, 100, 32, 128,
           "the largest CPU scale; a workstation or a GPU"),
    # open_lm shapes (d_model, layers, heads) and DCLM's per-size LR, warmup and global batch.
    # 79m: mlfoundations/scaling exp_data/models/rpj-d=512_l=8_h=4-1.0.json (lr 3e-3, warmup 400,
    # batch 512), the values the paper quotes for 79M.
    _paper("79m", 512, 8, 4, 3e-3, 400, 512, "the paper's small scale: 8 layers, d_model 512"),
    # 154m: mlfoundations/scaling exp_data/models/rpj-d=576_l=24_h=8-1.0.json (lr 3e-3,
    # warmup 400, batch 512). An extra rung for prediction; the paper did not train it.
    _paper("154m", 576, 24, 8, 3e-3, 400, 512, "extra rung for prediction: 24 layers, d_model 576"),
    # 411m: mlfoundations/dclm training/configs/411m_1x.json (lr 3e-3, warmup 2000, batch 512).
    # An extra rung for prediction; the paper did not train it.
    _paper("411m", 1024, 24, 8, 3e-3, 2000, 512, "extra rung for prediction: 24 layers, d_model 1024"),
    # 1.4b: mlfoundations/dclm training/configs/1b_1x_fast.json (warmup 5000, batch 256); LR 1e-2
    # is the paper's (Keh et al., appendix), where DCLM's 1b_1x_fast uses 3e-3 — kept on purpose.
    _paper("1.4b", 2048, 24, 16, 1e-2, 5000, 256,
           "the paper's large scale: 24 layers, 16 heads, d_model 2048"),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
