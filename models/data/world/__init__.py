"""The built-in world: a seeded procedural generator of text, image-caption pairs, instruction
data and benchmarks, with random access — sample i of every stream is a pure function of
(world seed, stream, i), which makes resuming a stream exact and trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.types import LazyImage
from models.data.world import corpus, scenes
from models.data.world.entities import DEFAULT_KINDS, World, make_world
from models.data.world.render import render

# Stream codes keep the random streams of one world apart. The held-out streams draw from the
# training distributions but are read by no training stream: validation sets never trained on.
_TEXT, _PAIRS, _INSTRUCTIONS = 1, 2, 3
_HELDOUT_TEXT, _HELDOUT_PAIRS = 4, 5


@dataclass(frozen=True, slots=True)
class WorldData:
    """Random access to one world's training streams."""

    world: World

    @classmethod
    def from_seed(cls, seed: int, n_kinds: int = DEFAULT_KINDS) -> "WorldData":
        return cls(make_world(int(seed), int(n_kinds)))

    def _rng(self, stream: int, i: int) -> np.random.Generator:
        return np.random.default_rng([self.world.seed, stream, i])

    def text(self, i: int) -> str:
        return corpus.document(self.world, self._rng(_TEXT, i))

    def pair_scene(self, i: int) -> tuple[scenes.Scene, str]:
        rng = self._rng(_PAIRS, i)
        scene = scenes.sample_scene(self.world, rng)
        return scene, scenes.caption(self.world, scene, rng)

    def _image(self, scene: scenes.Scene, image_size: int, lazy: bool) -> np.ndarray | LazyImage:
        if lazy:  # the scene (and so the text) is drawn now; only the pixels wait
            return LazyImage(render, scene, self.world.kinds, image_size)
        return render(scene, self.world.kinds, image_size)

    def pair(self, i: int, image_size: int = 32, lazy: bool = False) -> tuple[np.ndarray | LazyImage, str]:
        """(uint8 [H, W, 3] image, caption) of training pair i (the image rendered on demand if lazy)."""
        scene, text = self.pair_scene(i)
        return self._image(scene, image_size, lazy), text

    def heldout_text(self, i: int) -> str:
        """Held-out document i (the training distribution, never a training document's draw)."""
        return corpus.document(self.world, self._rng(_HELDOUT_TEXT, i))

    def heldout_pair(self, i: int, image_size: int = 32) -> tuple[np.ndarray, str]:
        """(image, caption) of held-out pair i, drawn as training pairs are."""
        rng = self._rng(_HELDOUT_PAIRS, i)
        scene = scenes.sample_scene(self.world, rng)
        return render(scene, self.world.kinds, image_size), scenes.caption(self.world, scene, rng)

    def instruction(self, i: int, image_size: int = 32,
                    lazy: bool = False) -> tuple[np.ndarray | LazyImage, list[tuple[str, str]]]:
        """(image, [(question, answer), …]) of instruction sample i."""
        rng = self._rng(_INSTRUCTIONS, i)
        scene = scenes.sample_scene(self.world, rng)
        turns = scenes.instruction_turns(self.world, scene, rng)
        return self._image(scene, image_size, lazy), turns


__all__ = ["WorldData", "World", "make_world"]
