"""Scenes of the built-in world, their captions, and LLaVA-style questions about them.

Training and evaluation draw scenes from separate generators. A layout of three or four things
(which kinds in which cells) hashes to a split, so those evaluation layouts never appear in
training; layouts of one or two things are too few to hold any out (see `HELD_OUT_MIN_THINGS`),
so those scenes go to a split by a draw, in the same proportion. Training never renders a kind
with its held-out texture. Questions are shared by instruction data and the VL benchmarks;
knowledge questions in training only ask about kinds with `knowledge_qa`.
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from models.data.world import lexicon as lx
from models.data.world.entities import World
from models.data.world.render import Instance, Scene

EVAL_LAYOUT_SHARE = 10  # one layout in this many is reserved for evaluation
# Only layouts of this many things or more are reserved. With 8 kinds there are 32 one-thing and
# 384 two-thing layouts: holding some out taught a model "a dax alone is never in the bottom
# left", and the demo's 1m models then answered "where is the dax?" on one-thing evaluation
# scenes 0.00-0.01 right (0.61-0.68 on training layouts): memory scored below chance. Three or
# four things give 6,144 layouts, too many to remember.
HELD_OUT_MIN_THINGS = 3
RELATIONS = ("left of", "right of", "above", "below")
RELATION_CLAUSE_SHARE = 0.7  # captions of scenes with a related pair that also state the relation
CAPTION_TEMPLATES = ("there is {} .", "this picture shows {} .", "{} .", "we see {} .",
                     "the image shows {} .")


def layout_is_eval(instances) -> bool:
    """Whether this layout is reserved for evaluation (never drawn for training)."""
    if len(instances) < HELD_OUT_MIN_THINGS:
        return False
    key = ",".join(f"{i.cell}:{i.kind}" for i in sorted(instances, key=lambda i: i.cell))
    return zlib.crc32(key.encode()) % EVAL_LAYOUT_SHARE == 0


def scene_split(instances, rng: np.random.Generator) -> str:
    """The split a scene goes to: by layout for 3-4 things, else by a draw in the same proportion,
    so that each split keeps the same share of scenes with 1, 2, 3 and 4 things."""
    if len(instances) >= HELD_OUT_MIN_THINGS:
        return "eval" if layout_is_eval(instances) else "train"
    return "eval" if rng.random() < 1.0 / EVAL_LAYOUT_SHARE else "train"


def sample_scene(world: World, rng: np.random.Generator, *, split: str = "train",
                 n_entities: int = 0, novel_texture: bool = False) -> Scene:
    """A random scene of `split`; `novel_texture` puts one held-out (kind, texture) in it."""
    while True:
        n = n_entities or int(rng.integers(1, 5))
        cells = rng.choice(4, size=n, replace=False)
        # Repeating a kind now and then makes counting questions about kinds non-trivial.
        pool = rng.choice(world.n, size=n, replace=False, p=world.frequency)
        kinds = [int(pool[0]) if (j > 0 and rng.random() < 0.25) else int(pool[j]) for j in range(n)]
        insts = []
        for j, (cell, k) in enumerate(zip(cells, kinds)):
            allowed = [t for t in lx.TEXTURES if t != world.kinds[k].heldout_texture]
            texture = (world.kinds[k].heldout_texture if novel_texture and j == 0
                       else allowed[int(rng.integers(len(allowed)))])
            insts.append(Instance(kind=k, cell=int(cell), size=lx.SIZES[int(rng.integers(2))],
                                  texture=texture,
                                  jitter=tuple(float(v) for v in rng.uniform(-0.1, 0.1, 2))))
        if scene_split(insts, rng) == split:
            return Scene(instances=tuple(insts), noise_seed=int(rng.integers(2**63)))


def describe(world: World, inst: Instance, rng: np.random.Generator | None = None) -> str:
    k = world.kinds[inst.kind]
    words = [inst.size, k.colour, inst.texture, k.name]
    if rng is not None and rng.random() < 0.3:  # shorter mentions keep captions varied
        words = [k.colour, k.name] if rng.random() < 0.5 else [inst.size, k.name]
    return "a " + " ".join(words) + " in the " + lx.CELLS[inst.cell]


def caption(world: World, scene: Scene, rng: np.random.Generator) -> str:
    """The things in cell order, then (most of the time) how two of them sit, as dense captions
    state relations: the spatial questions then ask what pre-training has already said."""
    parts = [describe(world, i, rng) for i in sorted(scene.instances, key=lambda i: i.cell)]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    text = template.format(" and ".join(parts))
    pair = relation_pair(scene, rng)
    if pair is not None and rng.random() < RELATION_CLAUSE_SHARE:
        a, b = pair
        text += f" the {world.kinds[a.kind].name} is {relation(a, b)} the {world.kinds[b.kind].name} ."
    return text


def canonical_caption(world: World, scene: Scene) -> str:
    """The one fixed-form caption the matching benchmark scores."""
    parts = [describe(world, i) for i in sorted(scene.instances, key=lambda i: i.cell)]
    return "the image shows " + " and ".join(parts) + " ."


# --- questions: each returns (question, answer, choices) -------------------------------------

QA = tuple[str, str, tuple[str, ...]]


def q_attribute(world: World, scene: Scene, rng: np.random.Generator, inst=None) -> QA:
    inst = inst or scene.instances[int(rng.integers(len(scene.instances)))]
    k = world.kinds[inst.kind]
    attr = ("colour", "shape", "size", "texture")[int(rng.integers(4))]
    values = {"colour": (k.colour, tuple(lx.COLOURS)), "shape": (k.shape, lx.SHAPES),
              "size": (inst.size, lx.SIZES), "texture": (inst.texture, lx.TEXTURES)}[attr]
    return f"what {attr} is the thing in the {lx.CELLS[inst.cell]} ?", values[0], values[1]


def q_texture(world: World, scene: Scene, rng: np.random.Generator) -> QA:
    inst = scene.instances[0]  # novel-texture scenes put the held-out combination first
    k = world.kinds[inst.kind]
    return f"what texture is the {k.name} in the {lx.CELLS[inst.cell]} ?", inst.texture, lx.TEXTURES


def q_count(world: World, scene: Scene, rng: np.random.Generator) -> QA:
    if rng.random() < 0.5:
        return "how many things are there ?", str(len(scene.instances)), ("1", "2", "3", "4")
    k = world.kinds[scene.instances[int(rng.integers(len(scene.instances)))].kind]
    n = sum(1 for i in scene.instances if i.kind == k.index)
    return f"how many {k.plural} are there ?", str(n), ("1", "2", "3", "4")


def q_exists(world: World, scene: Scene, rng: np.random.Generator, negative: str = "random",
             answer: bool | None = None, popularity=None) -> QA:
    present = {i.kind for i in scene.instances}
    yes = bool(rng.integers(2)) if answer is None else answer
    if yes:
        k = sorted(present)[int(rng.integers(len(present)))]
    else:
        k = pick_absent(world, present, rng, negative, popularity)
    return f"is there a {world.kinds[k].name} in the image ?", "yes" if yes else "no", ("yes", "no")


def pick_absent(world: World, present: set[int], rng, negative: str, popularity=None) -> int:
    """POPE's negatives: random, popular (frequent kinds), adversarial (look like a present one)."""
    absent = [k for k in range(world.n) if k not in present]
    if negative == "popular" and popularity is not None:
        return max(absent, key=lambda k: (popularity[k], -k))
    if negative == "adversarial":
        shown = [world.kinds[k] for k in present]
        similar = [k for k in absent if any(world.kinds[k].shape == s.shape or
                                            world.kinds[k].colour == s.colour for s in shown)]
        absent = similar or absent
    return absent[int(rng.integers(len(absent)))]


def q_exists_mixed(world: World, scene: Scene, rng: np.random.Generator) -> QA:
    """Instruction data's existence questions: negatives random, popular or adversarial in turn,
    as LRV-Instruction adds hard negatives; with random ones only, a model learns to say "yes" to
    the kinds it sees most (POPE popular fell to 0.33 in the 1m demo)."""
    negative = ("random", "popular", "adversarial")[int(rng.integers(3))]
    return q_exists(world, scene, rng, negative=negative, popularity=world.frequency)


def q_where(world: World, scene: Scene, rng: np.random.Generator) -> QA:
    inst = scene.instances[int(rng.integers(len(scene.instances)))]
    name = world.kinds[inst.kind].name
    if sum(1 for i in scene.instances if i.kind == inst.kind) > 1:
        name = describe(world, inst)[2:].rsplit(" in the ", 1)[0]  # disambiguate by attributes
    return f"where is the {name} ?", f"in the {lx.CELLS[inst.cell]}", tuple(f"in the {c}" for c in lx.CELLS)


def relation_pair(scene: Scene, rng):
    """Two instances in one row or one column, so that exactly one relation word is right."""
    pairs = [(a, b) for a in scene.instances for b in scene.instances
             if a is not b and a.kind != b.kind and (a.cell // 2 == b.cell // 2 or a.cell % 2 == b.cell % 2)]
    return pairs[int(rng.integers(len(pairs)))] if pairs else None


def relation(a: Instance, b: Instance) -> str:
    """Where `a` is compared to `b`, two instances in one row or one column."""
    if a.cell // 2 == b.cell // 2:
        return "left of" if a.cell % 2 < b.cell % 2 else "right of"
    return "above" if a.cell // 2 < b.cell // 2 else "below"


def q_relation(world: World, scene: Scene, rng: np.random.Generator) -> QA | None:
    pair = relation_pair(scene, rng)
    if pair is None:
        return None
    a, b = pair
    na, nb = world.kinds[a.kind].name, world.kinds[b.kind].name
    return f"where is the {na} compared to the {nb} ?", relation(a, b), RELATIONS


def q_knowledge(world: World, scene: Scene, rng: np.random.Generator, *, train: bool) -> QA | None:
    """A question about the thing in a cell that only text knowledge answers."""
    cands = [i for i in scene.instances if world.kinds[i.kind].knowledge_qa == train]
    if not cands:
        return None
    inst = cands[int(rng.integers(len(cands)))]
    k, where = world.kinds[inst.kind], f"the thing in the {lx.CELLS[inst.cell]}"
    which = int(rng.integers(4))
    if which == 0:
        return f"can {where} be eaten ?", "yes" if k.edible else "no", ("yes", "no")
    if which == 1:
        return f"where does {where} live ?", f"in the {k.habitat}", tuple(f"in the {h}" for h in lx.HABITATS)
    if which == 2:
        return f"what is {where} used for ?", f"for {k.use}", tuple(f"for {u}" for u in lx.USES)
    return f"what kind of thing is {where} ?", k.category, lx.CATEGORIES


def instruction_turns(world: World, scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """1–3 (question, answer) turns about a training scene, for instruction data; never none.

    Relation and knowledge questions do not fit every scene (no two kinds in one row or column; no
    thing whose facts instruction data asks about). A kind of question that does not fit is left
    out for this turn and another drawn from the rest, which always fit. (Eight redraws from all
    kinds used to give up: 1 conversation in ~20,000 came out empty, world 1's record 1469.)
    """
    makers: list[Callable] = [q_attribute, q_count, q_exists_mixed, q_where, q_relation,
                              lambda w, s, r: q_knowledge(w, s, r, train=True),
                              lambda w, s, r: ("describe the picture .", caption(w, s, r), ())]
    weights = np.array([3, 2, 2, 2, 2, 3, 1], float)
    turns = []
    for _ in range(int(rng.integers(1, 4))):
        fits = weights.copy()
        while True:
            k = int(rng.choice(len(makers), p=fits / fits.sum()))
            qa = makers[k](world, scene, rng)
            if qa is not None:
                turns.append((qa[0], qa[1]))
                break
            fits[k] = 0.0
    return turns
