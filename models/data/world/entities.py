"""The world's entity kinds, drawn from the world seed: what each looks like and what is true of it.

A kind has fixed visual attributes (shape, colour) and non-visual knowledge (category, habitat,
use, edible, weight rank) that only the text corpus states. Instances in images add a size and a
texture; one texture per kind is held out of training images for compositional tests, and half
the kinds are never asked about in instruction data so that knowledge VQA needs the text trunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from models.data.world import lexicon as lx

DEFAULT_KINDS = 32
MIN_KINDS, MAX_KINDS = 4, len(lx.KIND_NAMES)


@dataclass(frozen=True, kw_only=True, slots=True)
class Kind:
    """One entity kind of a world."""

    index: int
    name: str  # a pseudo-word from the lexicon
    shape: str  # visual: fixed per kind
    colour: str  # visual: fixed per kind
    category: str  # knowledge, text only
    habitat: str
    use: str
    edible: bool
    weight: int  # rank 0 = lightest; comparisons in text
    heldout_texture: str  # never rendered on this kind in training images
    knowledge_qa: bool  # asked about in instruction data (else reserved for knowledge VQA eval)

    @property
    def plural(self) -> str:
        return lx.plural(self.name)


@dataclass(frozen=True, kw_only=True, slots=True)
class World:
    """All kinds of one world seed, plus lookups the generators need."""

    seed: int
    kinds: tuple[Kind, ...]
    frequency: tuple[float, ...]  # how often each kind appears in scenes (Zipf-like; POPE "popular")

    def by_name(self, name: str) -> Kind:
        for k in self.kinds:
            if k.name == name:
                return k
        raise KeyError(f"world {self.seed} has no kind {name!r}")

    @property
    def n(self) -> int:
        return len(self.kinds)


def world_identity(source) -> tuple[int, int]:
    """(seed, n_kinds) of a `kind = "world"` data source: what makes one built-in world another."""
    return int(source.option("seed", 0)), int(source.option("n_kinds", DEFAULT_KINDS))


@lru_cache(maxsize=16)
def make_world(seed: int, n_kinds: int = DEFAULT_KINDS) -> World:
    """The world of `seed`: a pure function of (seed, n_kinds)."""
    if not MIN_KINDS <= n_kinds <= MAX_KINDS:
        raise ValueError(f"world n_kinds must be in [{MIN_KINDS}, {MAX_KINDS}], got {n_kinds}")
    rng = np.random.default_rng([seed, 7919])
    names = rng.choice(len(lx.KIND_NAMES), size=n_kinds, replace=False)
    # Distinct (shape, colour) pairs, so that a kind is recognisable from its picture alone.
    combos = rng.choice(len(lx.SHAPES) * len(lx.COLOURS), size=n_kinds, replace=False)
    colours = list(lx.COLOURS)
    weights = rng.permutation(n_kinds)
    knowledge_qa = rng.permutation(np.arange(n_kinds) % 2 == 0)
    kinds = []
    for i in range(n_kinds):
        shape, colour = divmod(int(combos[i]), len(colours))
        kinds.append(Kind(
            index=i, name=lx.KIND_NAMES[int(names[i])], shape=lx.SHAPES[shape],
            colour=colours[colour], category=lx.CATEGORIES[int(rng.integers(len(lx.CATEGORIES)))],
            habitat=lx.HABITATS[int(rng.integers(len(lx.HABITATS)))],
            use=lx.USES[int(rng.integers(len(lx.USES)))], edible=bool(rng.integers(2)),
            weight=int(weights[i]), heldout_texture=lx.TEXTURES[int(rng.integers(len(lx.TEXTURES)))],
            knowledge_qa=bool(knowledge_qa[i])))
    # Skewed kind frequencies make POPE's "popular" negatives differ from its random ones.
    freq = 1.0 / (rng.permutation(n_kinds) + 1.0) ** 0.7
    return World(seed=seed, kinds=tuple(kinds), frequency=tuple(float(f) for f in freq / freq.sum()))
