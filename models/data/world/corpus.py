"""The built-in world's text corpus: short documents from a grammar.

Document types: facts about kinds (many templates, so each fact repeats in varied words), Q/A
drills in the benchmark's format, weight comparisons, stories that track state (where a thing is,
how many things someone has), and arithmetic. Stories hash to a split like scenes do, so no
evaluation story is ever a training document.
"""

from __future__ import annotations

import zlib

import numpy as np

from models.data.world import lexicon as lx
from models.data.world.entities import Kind, World

EVAL_STORY_SHARE = 10

FACT_TEMPLATES = {
    "category": ("a {n} is a kind of {category} .", "the {n} is a {category} .",
                 "every {n} is a {category} ."),
    "habitat": ("a {n} lives in the {habitat} .", "you can find a {n} in the {habitat} .",
                "{pl} live in the {habitat} ."),
    "use": ("people use a {n} for {use} .", "a {n} is used for {use} .",
            "{pl} are useful for {use} ."),
    "edible": ("you {can} eat a {n} .", "a {n} {can} be eaten .", "{pl} {can} be eaten ."),
    "colour": ("a {n} is {colour} .", "the colour of a {n} is {colour} ."),
    "shape": ("a {n} is shaped like a {shape} .", "a {n} looks like a {shape} ."),
}


def fact(kind: Kind, attr: str, rng: np.random.Generator) -> str:
    templates = FACT_TEMPLATES[attr]
    return templates[int(rng.integers(len(templates)))].format(
        n=kind.name, pl=kind.plural, category=kind.category, habitat=kind.habitat, use=kind.use,
        can="can" if kind.edible else "can not", colour=kind.colour, shape=kind.shape)


def fact_question(kind: Kind, attr: str) -> tuple[str, str, tuple[str, ...]]:
    """(question, answer, all answers) in the Q/A format the text benchmark asks."""
    n = kind.name
    table = {
        "category": (f"what kind of thing is a {n} ?", kind.category, lx.CATEGORIES),
        "habitat": (f"where does a {n} live ?", f"in the {kind.habitat}",
                    tuple(f"in the {h}" for h in lx.HABITATS)),
        "use": (f"what is a {n} used for ?", f"for {kind.use}", tuple(f"for {u}" for u in lx.USES)),
        "edible": (f"can you eat a {n} ?", "yes" if kind.edible else "no", ("yes", "no")),
        "colour": (f"what colour is a {n} ?", kind.colour, tuple(lx.COLOURS)),
        "shape": (f"what shape is a {n} ?", kind.shape, lx.SHAPES),
    }
    return table[attr]


def facts_doc(world: World, rng: np.random.Generator) -> str:
    kinds = rng.choice(world.n, size=2, replace=False)
    sentences = []
    for k in kinds:
        attrs = rng.choice(list(FACT_TEMPLATES), size=4, replace=False)
        sentences += [fact(world.kinds[int(k)], str(a), rng) for a in attrs]
    return " ".join(sentences)


def qa_doc(world: World, rng: np.random.Generator) -> str:
    lines = []
    for _ in range(3):
        kind = world.kinds[int(rng.integers(world.n))]
        q, a, _ = fact_question(kind, str(rng.choice(list(FACT_TEMPLATES))))
        lines.append(f"question : {q} answer : {a} .")
    return " ".join(lines)


def comparison_doc(world: World, rng: np.random.Generator) -> str:
    lines = []
    for _ in range(3):
        a, b = (world.kinds[int(i)] for i in rng.choice(world.n, size=2, replace=False))
        heavy, light = (a, b) if a.weight > b.weight else (b, a)
        form = int(rng.integers(3))
        if form == 0:
            lines.append(f"a {heavy.name} is heavier than a {light.name} .")
        elif form == 1:
            lines.append(f"a {light.name} is lighter than a {heavy.name} .")
        else:
            lines.append(f"question : which is heavier , a {a.name} or a {b.name} ? "
                         f"answer : a {heavy.name} .")
    return " ".join(lines)


def story_is_eval(key: str) -> bool:
    return zlib.crc32(key.encode()) % EVAL_STORY_SHARE == 0


def location_story(world: World, rng: np.random.Generator, split: str) -> tuple[list[str], str, list[str]]:
    """(sentences but the last, the last sentence, wrong last sentences) of a location story."""
    while True:
        who = lx.PEOPLE[int(rng.integers(len(lx.PEOPLE)))]
        kind = world.kinds[int(rng.integers(world.n))]
        n_moves = int(rng.integers(1, 4))
        places = [int(rng.integers(len(lx.PLACES)))]
        for _ in range(n_moves):
            places.append(int(rng.choice([p for p in range(len(lx.PLACES)) if p != places[-1]])))
        if story_is_eval(f"loc:{kind.name}:{places}") == (split == "eval"):
            break
    body = [f"the {kind.name} is in the {lx.PLACES[places[0]]} ."]
    body += [f"{who} moves the {kind.name} to the {lx.PLACES[p]} ." for p in places[1:]]
    ending = f"now the {kind.name} is in the {{}} ."
    wrong = [p for p in range(len(lx.PLACES)) if p != places[-1]]
    wrong = sorted(wrong, key=lambda p: (p not in places, rng.random()))[:3]  # earlier places first
    return body, ending.format(lx.PLACES[places[-1]]), [ending.format(lx.PLACES[p]) for p in wrong]


def count_story(world: World, rng: np.random.Generator, split: str) -> tuple[list[str], str, list[str]]:
    """(sentences but the last, the last sentence, wrong last sentences) of a possession story."""
    while True:
        who = lx.PEOPLE[int(rng.integers(len(lx.PEOPLE)))]
        kind = world.kinds[int(rng.integers(world.n))]
        have = int(rng.integers(1, 10))
        changes = [int(rng.integers(-min(have, 4), 5)) or 1 for _ in range(int(rng.integers(1, 3)))]
        if story_is_eval(f"cnt:{kind.name}:{have}:{changes}") == (split == "eval"):
            break
    body = [f"{who} has {have} {kind.plural} ."]
    for c in changes:
        if have + c < 0:
            c = -have
        body.append(f"{who} gets {c} more {kind.plural} ." if c >= 0 else
                    f"{who} gives {-c} {kind.plural} to {lx.PEOPLE[(lx.PEOPLE.index(who) + 1) % 8]} .")
        have += c
    ending = f"now {who} has {{}} {kind.plural} ."
    wrong = [v for v in (have - 2, have - 1, have + 1, have + 2) if 0 <= v <= lx.MAX_NUMBER]
    wrong = [int(v) for v in rng.permutation(wrong)[:3]]
    return body, ending.format(have), [ending.format(v) for v in wrong]


def arithmetic(rng: np.random.Generator) -> tuple[int, str, int, int]:
    a, b = int(rng.integers(0, 11)), int(rng.integers(0, 11))
    if rng.random() < 0.5:
        return a, "plus", b, a + b
    a, b = max(a, b), min(a, b)
    return a, "minus", b, a - b


def arithmetic_doc(rng: np.random.Generator) -> str:
    lines = []
    for _ in range(4):
        a, op, b, c = arithmetic(rng)
        lines.append(f"{a} {op} {b} is {c} ." if rng.random() < 0.6 else
                     f"question : what is {a} {op} {b} ? answer : {c} .")
    return " ".join(lines)


def document(world: World, rng: np.random.Generator) -> str:
    """One training document; the mix favours facts, which the benchmarks mostly ask about."""
    kind = int(rng.choice(6, p=[0.35, 0.2, 0.1, 0.1, 0.1, 0.15]))
    if kind == 0:
        return facts_doc(world, rng)
    if kind == 1:
        return qa_doc(world, rng)
    if kind == 2:
        return comparison_doc(world, rng)
    if kind in (3, 4):
        body, end, _ = (location_story if kind == 3 else count_story)(world, rng, "train")
        return " ".join(body + [end])
    return arithmetic_doc(rng)
