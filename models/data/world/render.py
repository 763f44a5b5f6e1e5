"""Rendering scenes of the built-in world: 1–4 entities on a 2×2 grid, with jitter and noise.

Pure numpy with cached shape masks and texture patterns, so thousands of images render per second
on one core. A scene is plain data; the picture is a pure function of (scene, image size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from models.data.world import lexicon as lx

NOISE_SIGMA = 10.0  # per-pixel Gaussian noise; enough to make images differ, not to hide shapes
BACKGROUND = 45.0  # dark grey, so that every colour (white included) stands out


@dataclass(frozen=True, kw_only=True, slots=True)
class Instance:
    """One entity in a scene."""

    kind: int  # index into World.kinds
    cell: int  # 0..3: top left, top right, bottom left, bottom right
    size: str
    texture: str
    jitter: tuple[float, float] = (0.0, 0.0)  # (dy, dx) as a fraction of the cell side


@dataclass(frozen=True, kw_only=True, slots=True)
class Scene:
    instances: tuple[Instance, ...]
    noise_seed: int  # the noise pattern; part of the scene so that the render is a pure function

    def at(self, cell: int) -> Instance | None:
        return next((i for i in self.instances if i.cell == cell), None)


@lru_cache(maxsize=256)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """A boolean [side, side] mask of `shape`."""
    c = (side - 1) / 2.0
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    dy, dx = (y - c) / max(c, 0.5), (x - c) / max(c, 0.5)  # both in [-1, 1]
    r = np.sqrt(dx * dx + dy * dy)
    masks = {
        "circle": r <= 1.0,
        "square": np.ones((side, side), bool),
        "triangle": (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) / 2.0),
        "diamond": np.abs(dx) + np.abs(dy) <= 1.0,
        "cross": (np.abs(dx) <= 0.34) | (np.abs(dy) <= 0.34),
        "bar": np.abs(dy) <= 0.45,
        "pillar": np.abs(dx) <= 0.45,
        "ring": (r <= 1.0) & (r >= 0.5),
    }
    return masks[shape]


@lru_cache(maxsize=64)
def texture_shade(texture: str, side: int) -> np.ndarray:
    """A [side, side, 1] brightness factor: 1 where the colour shows, darker on stripes/dots."""
    y, x = np.mgrid[0:side, 0:side]
    # Dots and stripes of half a period, the period a quarter of the side (at least 2 pixels):
    # visible on small things too, which a 32×32 render of 1-pixel dots every 3 pixels was not.
    period = max(2, side // 4)
    half = period // 2
    dark = {"plain": np.zeros((side, side), bool),
            "striped": (y // half) % 2 == 1,
            "dotted": ((y % period) < half) & ((x % period) < half)}[texture]
    return np.where(dark, 0.4, 1.0).astype(np.float32)[..., None]


def entity_side(size: str, image_size: int) -> int:
    cell = image_size // 2
    return max(3, round(cell * (0.8 if size == "big" else 0.5)))


def render(scene: Scene, kinds, image_size: int = 32) -> np.ndarray:
    """The scene as uint8 [H, W, 3]; `kinds` is World.kinds."""
    rng = np.random.default_rng(scene.noise_seed)
    img = np.full((image_size, image_size, 3), BACKGROUND, np.float32)
    cell = image_size // 2
    for inst in scene.instances:
        kind = kinds[inst.kind]
        side = entity_side(inst.size, image_size)
        row, col = divmod(inst.cell, 2)
        y0 = row * cell + (cell - side) // 2 + round(inst.jitter[0] * cell)
        x0 = col * cell + (cell - side) // 2 + round(inst.jitter[1] * cell)
        y0, x0 = min(max(y0, 0), image_size - side), min(max(x0, 0), image_size - side)
        mask = shape_mask(kind.shape, side)
        patch = np.asarray(lx.COLOURS[kind.colour], np.float32) * texture_shade(inst.texture, side)
        region = img[y0:y0 + side, x0:x0 + side]
        region[mask] = patch[mask]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(NOISE_SIGMA)
    return np.clip(img, 0, 255).astype(np.uint8)


def normalise(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] → float32 [..., 3, H, W] as (x/255 - 0.5)/0.5."""
    x = images_uint8.astype(np.float32) * (2.0 / 255.0) - 1.0
    return np.moveaxis(x, -1, -3)
