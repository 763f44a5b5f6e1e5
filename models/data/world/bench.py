"""The built-in world's benchmarks: VL and text tasks on held-out samples, with chance levels.

Items come from evaluation-only generators (their own seeds, and layouts of three or four things
and stories reserved for evaluation), so none is a training sample. POPE answers alternate yes/no,
so each POPE task is exactly balanced. Prompts use the instruction format: image placeholders,
`<user>` question `<assistant>`; text tasks use the corpus's "question : … answer :" drill format.

Chance for a question about a picture is what a model that never looks at it can score: always
giving the most common answer of each kind of question (`answer_prior_rate`). The world's kinds
and knowledge are skewed, so that blind answer beats a uniform guess: in an 8-kind world knowledge
VQA's is 0.47, not 0.24. Caption matching and the text tasks, whose choices are drawn per item,
keep the uniform rate (arithmetic, an open answer: the share of the most common one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.data.types import EvalItem, EvalTask, chance_level
from models.data.world import corpus, scenes
from models.data.world.entities import World
from models.data.world.render import normalise, render
from models.stepfiles import write_json

VL_TASKS = ("attribute_vqa", "attribute_vqa_novel", "counting", "spatial_relation", "pope_random",
            "pope_popular", "pope_adversarial", "knowledge_vqa", "caption_matching")
TEXT_TASKS = ("fact_recall", "story_completion", "arithmetic")
GENERATE_TASKS = ("counting", "arithmetic")
PRIOR_DRAWS = 2000  # questions drawn to measure a task's blind-answer rate (± about 0.01)


class _Maker:
    """Builds items for one task; `question` returns (scene, QA) or (None, text-item parts)."""

    def __init__(self, world: World, tok, image_size: int, image_tokens: int) -> None:
        self.world, self.tok, self.image_size, self.image_tokens = world, tok, image_size, image_tokens

    def vl_item(self, scene, qa, kind: str) -> EvalItem:
        question, answer, choices = qa
        prompt = [self.tok.image_id] * self.image_tokens + self.tok.encode(f"<user> {question} <assistant>")
        image = normalise(render(scene, self.world.kinds, self.image_size))
        if kind == "generate":
            return EvalItem(prompt_tokens=prompt, image=image, answers=[answer], max_new_tokens=4)
        return EvalItem(prompt_tokens=prompt, image=image, label=list(choices).index(answer),
                        choices=[self.tok.encode(c) for c in choices], choice_texts=list(choices))

    def mc_text(self, prompt: str, answer: str, wrong: list[str]) -> EvalItem:
        choices = [answer] + list(wrong)
        return EvalItem(prompt_tokens=self.tok.encode(prompt), image=None, label=0, prompt_text=prompt,
                        choices=[self.tok.encode(" " + c) for c in choices], choice_texts=choices)


def _vl_question(name: str, world: World, rng, i: int):
    """(scene, QA) for VL task `name`, or None to draw again."""
    if name == "attribute_vqa_novel":
        scene = scenes.sample_scene(world, rng, split="eval", novel_texture=True)
        return scene, scenes.q_texture(world, scene, rng)
    scene = scenes.sample_scene(world, rng, split="eval")
    if name == "attribute_vqa":
        return scene, scenes.q_attribute(world, scene, rng)
    if name == "counting":
        return scene, scenes.q_count(world, scene, rng)
    if name == "spatial_relation":
        qa = scenes.q_relation(world, scene, rng)
        return (scene, qa) if qa else None
    if name.startswith("pope_"):
        qa = scenes.q_exists(world, scene, rng, negative=name[5:], answer=(i % 2 == 0),
                             popularity=world.frequency)
        return scene, qa
    if name == "knowledge_vqa":
        qa = scenes.q_knowledge(world, scene, rng, train=False)
        return (scene, qa) if qa else None
    raise KeyError(name)


def _draw_vl_question(name: str, world: World, rng, i: int):
    """(scene, QA) for item i of VL task `name`, drawing again where a scene has no such question."""
    for _ in range(100):
        drawn = _vl_question(name, world, rng, i)
        if drawn is not None:
            return drawn
    raise RuntimeError(f"world benchmark {name}: could not draw a scene for item {i}")


@lru_cache(maxsize=64)
def answer_prior_rate(name: str, world: World, draws: int = PRIOR_DRAWS) -> float:
    """The accuracy of answering each question of VL task `name` with the answer most common among
    questions with the same choices, over `draws` questions of its own stream (not the items).

    About 5 s of CPU per task (rejection-sampled evaluation scenes), so it is computed once per
    machine: kept on disk under `chance_cache_dir()` by (task, world, draws, the world code's
    hash), one worker computing while the others wait for its file.
    """
    key = f"chance-{name}-w{world.seed}-k{world.n}-d{draws}-{_world_code_hash()}.json"
    with _cache_entry(key) as cached:
        if cached.get("value") is None:
            cached["value"] = _blind_rate(name, world, draws)
        return float(cached["value"])


@lru_cache(maxsize=1)
def _world_code_hash() -> str:
    """A hash of the world's generator code: any edit to it makes cached values stale."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


BLIND_TASKS = tuple(name for name in VL_TASKS if name != "caption_matching")  # caption matching's is uniform


def blind_rates(world: World, tasks: tuple[str, ...] = BLIND_TASKS) -> dict[str, float]:
    """The blind-answer rates of VL `tasks` (default: every one that has one): computed once per machine."""
    return {name: answer_prior_rate(name, world) for name in tasks}


def chance_cache_dir() -> Path:
    """$VLMSWEEP_CACHE, else $XDG_CACHE_HOME/vlmsweep, else ~/.cache/vlmsweep."""
    if os.environ.get("VLMSWEEP_CACHE"):
        return Path(os.environ["VLMSWEEP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlmsweep"


@contextlib.contextmanager
def _cache_entry(key: str):
    """A dict read from the cache file `key` (empty if absent) and written back if it gained a value;
    the file is locked meanwhile. An unusable cache directory just means computing every time."""
    path = chance_cache_dir() / key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield {}
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            entry = {}
        had = entry.get("value") is not None
        yield entry
        if not had and entry.get("value") is not None:
            write_json(path, entry, durable=False)
    finally:
        os.close(lock)


def _blind_rate(name: str, world: World, draws: int) -> float:
    answers: dict[tuple[str, ...], Counter] = defaultdict(Counter)
    for i in range(draws):
        _, (_, answer, choices) = _draw_vl_question(
            name, world, np.random.default_rng([world.seed, 3000 + VL_TASKS.index(name), i]), i)
        answers[tuple(choices)][answer] += 1
    return sum(max(c.values()) for c in answers.values()) / sum(sum(c.values()) for c in answers.values())


def _caption_item(m: _Maker, rng) -> EvalItem:
    """Four captions that differ from the right one in one entity's kind or cell."""
    world = m.world
    scene = scenes.sample_scene(world, rng, split="eval")
    right = scenes.canonical_caption(world, scene)
    wrong: list[str] = []
    while len(wrong) < 3:
        insts = list(scene.instances)
        j = int(rng.integers(len(insts)))
        free = [c for c in range(4) if scene.at(c) is None]
        if free and rng.random() < 0.3:
            insts[j] = scenes.Instance(kind=insts[j].kind, cell=int(rng.choice(free)),
                                       size=insts[j].size, texture=insts[j].texture)
        else:
            insts[j] = scenes.Instance(kind=int(rng.integers(world.n)), cell=insts[j].cell,
                                       size=insts[j].size, texture=insts[j].texture)
        text = scenes.canonical_caption(world, scenes.Scene(instances=tuple(insts), noise_seed=0))
        if text != right and text not in wrong:
            wrong.append(text)
    order = rng.permutation(4)
    captions = [([right] + wrong)[k] for k in order]
    prompt = [m.tok.image_id] * m.image_tokens
    return EvalItem(prompt_tokens=prompt, image=normalise(render(scene, world.kinds, m.image_size)),
                    choices=[m.tok.encode(c) for c in captions], choice_texts=captions,
                    label=int(np.argmax(order == 0)))


def _text_item(name: str, m: _Maker, rng) -> EvalItem:
    world = m.world
    if name == "fact_recall":
        kind = world.kinds[int(rng.integers(world.n))]
        q, a, values = corpus.fact_question(kind, str(rng.choice(list(corpus.FACT_TEMPLATES))))
        others = [v for v in values if v != a]
        wrong = [others[int(k)] for k in rng.permutation(len(others))[:3]]
        return m.mc_text(f"question : {q} answer :", a, wrong)
    if name == "story_completion":
        story = corpus.location_story if rng.random() < 0.5 else corpus.count_story
        body, end, wrong = story(world, rng, "eval")
        return m.mc_text(" ".join(body), end, wrong)
    a, op, b, c = corpus.arithmetic(rng)
    return EvalItem(prompt_tokens=m.tok.encode(f"question : what is {a} {op} {b} ? answer :"),
                    image=None, answers=[str(c)], max_new_tokens=2)


def _shuffle_choices(item: EvalItem, rng) -> EvalItem:
    order = rng.permutation(len(item.choices))
    item.choices = [item.choices[k] for k in order]
    item.choice_texts = [item.choice_texts[k] for k in order]
    item.label = int(np.argmax(order == item.label))
    return item


def build_task(name: str, world: World, tok, *, n: int, image_size: int, image_tokens: int,
               seed: int) -> EvalTask:
    """Task `name` with `n` items; item i is a pure function of (world seed, task, seed, i)."""
    m = _Maker(world, tok, image_size, image_tokens)
    group = "vl" if name in VL_TASKS else "text"
    kind = "generate" if name in GENERATE_TASKS else "multiple_choice"
    task_code = (VL_TASKS + TEXT_TASKS).index(name)
    items = []
    for i in range(n):
        rng = np.random.default_rng([world.seed, 1000 + task_code, seed, i])
        items.append(_one_item(name, m, rng, i, group, kind))
    chance = (answer_prior_rate(name, world) if name in VL_TASKS and name != "caption_matching"
              else chance_level(kind, items))
    return EvalTask(name=name, group=group, chance=chance, kind=kind, items=items, metric=world_metric(name))


def world_metric(name: str) -> str:
    """The metric family of world task `name` (`models.metrics.FAMILIES`)."""
    if name.startswith("pope_"):
        return "pope"
    return "exact_match" if name in GENERATE_TASKS else "multiple_choice"


def _one_item(name: str, m: _Maker, rng, i: int, group: str, kind: str) -> EvalItem:
    if name == "caption_matching":
        return _caption_item(m, rng)
    if group == "text":
        item = _text_item(name, m, rng)
        return _shuffle_choices(item, rng) if kind == "multiple_choice" else item
    scene, qa = _draw_vl_question(name, m.world, rng, i)
    return m.vl_item(scene, qa, kind)


