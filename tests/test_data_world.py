"""The built-in world: determinism, vocabulary, rendering, held-out splits, benchmark sanity."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from models.data import eval_tasks, get_tokenizer
from models.data.types import chance_level
from models.data.world import WorldData, corpus, scenes
from models.data.world import lexicon as lx
from models.data.world.bench import TEXT_TASKS, VL_TASKS, answer_prior_rate, build_task
from models.data.world.entities import make_world
from models.data.world.render import render
from models.presets import WORLD_VOCAB
from models.steps import DataSource

WORLD = DataSource(name="world", kind="world", options=(("seed", 0),))


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer(WORLD, vocab_limit=WORLD_VOCAB)


@pytest.fixture(scope="module")
def tasks(tok):
    return {t.name: t for t in eval_tasks(WORLD, tok, n_per_task=120, image_size=32, seed=0)}


def test_world_is_a_pure_function_of_its_seed():
    a, b, c = WorldData.from_seed(3), WorldData.from_seed(3), WorldData.from_seed(4)
    assert a.world == b.world and a.world != c.world
    assert [a.text(i) for i in range(20)] == [b.text(i) for i in range(20)]
    assert [a.text(i) for i in range(20)] != [c.text(i) for i in range(20)]
    img_a, cap_a = a.pair(7)
    img_b, cap_b = b.pair(7)
    assert cap_a == cap_b and np.array_equal(img_a, img_b)
    assert not np.array_equal(img_a, c.pair(7)[0])


def test_kinds_are_many_and_visually_distinct():
    world = make_world(0)
    assert world.n >= 24
    assert len({(k.shape, k.colour) for k in world.kinds}) == world.n
    assert {k.knowledge_qa for k in world.kinds} == {True, False}
    assert abs(sum(world.frequency) - 1.0) < 1e-9


def test_vocabulary_is_closed_and_fits_the_presets(tok, tasks):
    assert tok.vocab_size <= WORLD_VOCAB
    wd = WorldData.from_seed(0)
    ids = []
    for i in range(400):
        ids += tok.encode(wd.text(i)) + tok.encode(wd.pair(i)[1])
        ids += [t for q, a in wd.instruction(i)[1] for t in tok.encode(q + " " + a)]
    for task in tasks.values():
        for item in task.items[:30]:
            ids += item.prompt_tokens + [t for c in item.choices for t in c]
    assert tok.unk_id not in ids
    assert tok.decode(tok.encode("a dax is red .")) == "a dax is red ."


def test_render_shows_colour_size_and_position():
    world = make_world(0)
    kind = world.kinds[0]
    rgb = np.array(lx.COLOURS[kind.colour])
    for size in lx.SIZES:
        inst = scenes.Instance(kind=0, cell=1, size=size, texture="plain")
        img = render(scenes.Scene(instances=(inst,), noise_seed=1), world.kinds, 32).astype(float)
        close = np.abs(img - rgb).sum(-1) < 60
        assert close[:16, 16:].sum() > 6 and close[16:, :].sum() == 0  # only in the top right
        if size == "small":
            small = close.sum()
    assert close.sum() > small  # big covers more pixels
    assert render(scenes.Scene(instances=(inst,), noise_seed=1), world.kinds, 64).shape == (64, 64, 3)


def test_training_never_shows_eval_layouts_or_held_out_textures():
    wd = WorldData.from_seed(0)
    for i in range(500):
        scene, _ = wd.pair_scene(i)
        assert not scenes.layout_is_eval(scene.instances)
        assert all(inst.texture != wd.world.kinds[inst.kind].heldout_texture for inst in scene.instances)
    rng = np.random.default_rng(0)
    evals = [scenes.sample_scene(wd.world, rng, split="eval") for _ in range(400)]
    # Layouts of 3-4 things are reserved for evaluation; 1-2-thing layouts are too few to hold out
    # (a model would learn that the held-out ones never happen), so both splits draw them.
    assert all(scenes.layout_is_eval(s.instances) for s in evals if len(s.instances) >= 3)
    small = [s for s in evals if len(s.instances) < 3]
    assert small and not any(scenes.layout_is_eval(s.instances) for s in small)
    # ... in the same proportion as the rest: both splits keep 1-4 things equally likely (a split
    # that took every 1-2-thing scene but 1 in 10 bigger ones made evaluation mostly easy scenes).
    counts = np.bincount([len(s.instances) for s in evals], minlength=5)[1:]
    assert counts.min() > 0.6 * counts.max(), counts
    small_world = WorldData.from_seed(0, 8).world
    train_one = {(s.instances[0].kind, s.instances[0].cell) for s in
                 (scenes.sample_scene(small_world, rng, n_entities=1) for _ in range(2000))}
    assert len(train_one) == 4 * small_world.n  # every one-thing layout is drawn for training
    novel = scenes.sample_scene(wd.world, rng, split="eval", novel_texture=True)
    assert novel.instances[0].texture == wd.world.kinds[novel.instances[0].kind].heldout_texture


def test_eval_stories_are_not_training_documents(tasks, tok):
    train_docs = {WorldData.from_seed(0).text(i) for i in range(3000)}
    for item in tasks["story_completion"].items:
        context = tok.decode(item.prompt_tokens)
        story = context + " " + tok.decode(item.choices[item.label])
        assert story not in train_docs
        assert not any(doc.startswith(context) for doc in train_docs)


def test_instruction_knowledge_questions_avoid_the_held_out_kinds():
    wd = WorldData.from_seed(0)
    asked = set()
    for i in range(400):
        rng = np.random.default_rng([0, 3, i])
        scene = scenes.sample_scene(wd.world, rng)
        qa = scenes.q_knowledge(wd.world, scene, rng, train=True)
        if qa:
            cell = qa[0].split("the thing in the ")[1].split(" ")[0:2]
            inst = scene.at(lx.CELLS.index(" ".join(cell)))
            asked.add(inst.kind)
    assert asked and all(wd.world.kinds[k].knowledge_qa for k in asked)


def test_every_task_is_there_with_its_chance_level(tasks):
    assert set(tasks) == set(VL_TASKS + TEXT_TASKS)
    for task in tasks.values():
        assert len(task.items) == 120
        if task.group == "vl" and task.name != "caption_matching":  # the blind-answer rate
            assert task.chance == pytest.approx(answer_prior_rate(task.name, make_world(0)))
            assert task.kind == "generate" or task.chance >= chance_level(task.kind, task.items) - 1e-9
        else:
            assert task.chance == pytest.approx(chance_level(task.kind, task.items))
        for item in task.items:
            if task.kind == "multiple_choice":
                assert 0 <= item.label < len(item.choices) and len(set(map(tuple, item.choices))) == len(item.choices)
            else:
                assert item.answers and item.max_new_tokens > 0
            assert (item.image is not None) == (task.group == "vl")
    assert tasks["pope_random"].chance == 0.5  # balanced by construction
    assert tasks["spatial_relation"].chance == pytest.approx(0.25, abs=0.02)  # the four relations
    assert 0 < tasks["counting"].chance < 1 and 0 < tasks["arithmetic"].chance < 0.5


@pytest.mark.parametrize("name", ["knowledge_vqa", "attribute_vqa", "counting", "pope_popular"])
def test_chance_is_what_a_blind_answerer_scores(tok, name):
    """Answering without the image, with the most common answer seen for those choices on other
    items, scores the task's chance: knowledge VQA's blind rate is far above a uniform guess."""
    world = make_world(0, 8)
    make = lambda seed: build_task(name, world, tok, n=400, image_size=32, image_tokens=4, seed=seed)
    choices = lambda item: frozenset(map(tuple, item.choices or []))  # open answers: one group
    answer = lambda item: tuple(item.choices[item.label]) if item.choices else item.answers[0]
    seen: dict[frozenset, Counter] = defaultdict(Counter)
    for item in make(1).items:
        seen[choices(item)][answer(item)] += 1
    task = make(0)
    right = sum(seen[choices(it)].most_common(1)[0][0] == answer(it) for it in task.items
                if seen[choices(it)])
    assert right / len(task.items) == pytest.approx(task.chance, abs=0.07)
    if name == "knowledge_vqa":
        assert task.chance > 0.35 > chance_level("multiple_choice", task.items)


def test_answers_are_balanced(tasks):
    for name in ("pope_random", "pope_popular", "pope_adversarial"):
        labels = [it.label for it in tasks[name].items]
        assert labels.count(0) == labels.count(1)  # exactly balanced yes/no
    for name in ("caption_matching", "fact_recall", "story_completion"):
        labels = np.bincount([it.label for it in tasks[name].items], minlength=4)
        assert labels.min() >= 10, (name, labels)  # the right answer is not always in one place


def test_pope_negatives_differ_by_strategy(tasks, tok):
    world = make_world(0)
    popular = {k.name for k in world.kinds if world.frequency[k.index] >= sorted(world.frequency)[-4]}

    def negatives(name):
        return [tok.decode(it.prompt_tokens).split(" is there a ")[1].split(" ")[0]
                for it in tasks[name].items if it.label == 1]

    share = lambda names: np.mean([n in popular for n in names])
    assert share(negatives("pope_popular")) > share(negatives("pope_random")) + 0.3


def test_eval_items_depend_on_seed(tok):
    a = eval_tasks(WORLD, tok, tasks=("attribute_vqa",), n_per_task=5, image_size=32, seed=0)[0]
    b = eval_tasks(WORLD, tok, tasks=("attribute_vqa",), n_per_task=5, image_size=32, seed=1)[0]
    assert [i.prompt_tokens for i in a.items] != [i.prompt_tokens for i in b.items] or \
        not all(np.array_equal(x.image, y.image) for x, y in zip(a.items, b.items))
    assert eval_tasks(WORLD, tok, groups=("text",), n_per_task=2, image_size=32, seed=0)[0].group == "text"


def test_corpus_states_knowledge_that_captions_never_do():
    wd = WorldData.from_seed(0)
    captions = " ".join(wd.pair(i)[1] for i in range(300))
    for word in lx.HABITATS + lx.USES + lx.CATEGORIES:
        assert f" {word} " not in f" {captions} "
    text = " ".join(wd.text(i) for i in range(2000))
    for kind in wd.world.kinds:
        assert any(phrase in text for phrase in (
            f"{kind.name} lives in the {kind.habitat}", f"{kind.plural} live in the {kind.habitat}",
            f"find a {kind.name} in the {kind.habitat}", f"does a {kind.name} live ? answer : in the {kind.habitat}"))
    assert corpus.fact_question(wd.world.kinds[0], "edible")[1] in ("yes", "no")


def test_blind_rate_is_computed_once_per_machine_and_read_back(tmp_path, monkeypatch) -> None:
    """The ~5 s blind-answer rate is written to the cache directory and read back by a later process
    (lru_cache cleared here) without drawing a single question."""
    from models.data.world import bench

    monkeypatch.setenv("VLMSWEEP_CACHE", str(tmp_path))
    world = make_world(0, 8)
    bench.answer_prior_rate.cache_clear()
    first = bench.answer_prior_rate("counting", world, 50)
    assert [p.name.split("-")[1] for p in tmp_path.glob("chance-*.json")] == ["counting"]
    bench.answer_prior_rate.cache_clear()
    monkeypatch.setattr(bench, "_draw_vl_question", lambda *a: (_ for _ in ()).throw(AssertionError("drew")))
    assert bench.answer_prior_rate("counting", world, 50) == first
    bench.answer_prior_rate.cache_clear()
    monkeypatch.setenv("VLMSWEEP_CACHE", str(tmp_path / "other"))  # another cache: computed again
    with pytest.raises(AssertionError, match="drew"):
        bench.answer_prior_rate("counting", world, 50)
    bench.answer_prior_rate.cache_clear()


def test_every_instruction_conversation_has_a_turn():
    """`vlmsweep world --seed 1` wrote record 00001469 with "conversations": [] (eight redraws of
    scene-dependent questions all failed); the fine-tune set and the image stage's instruction
    mix read the same generator, so each got an empty conversation too."""
    wd = WorldData.from_seed(1)
    assert wd.instruction(10**9 + 1469)[1], "world 1's fine-tune conversation 1469 is empty"
    for seed in (0, 1):
        wd = WorldData.from_seed(seed)
        for i in range(3000):
            rng = wd._rng(3, 10**9 + i)
            assert scenes.instruction_turns(wd.world, scenes.sample_scene(wd.world, rng), rng), (seed, i)


def test_world_manifest_paths_are_relative_and_survive_a_copy(tmp_path):
    """A world copied to a cluster must not point back at the machine that wrote it."""
    import json
    import shutil

    from models.data.materialize import write_world
    from models.data.sources import open_source

    made = tmp_path / "made"
    write_world(made, 3, text_docs=40, pairs=8, instructions=4, eval_items=4, shards=1)
    raw = (made / "manifest.json").read_text()
    assert str(made) not in raw and str(made.resolve()) not in raw
    assert json.loads(raw)["sources"]["text"]["paths"] == ["text/*.jsonl.zst"]
    from models.data.materialize import read_world_manifest

    moved = tmp_path / "moved"
    shutil.copytree(made, moved)
    shutil.rmtree(made)
    source = read_world_manifest(moved)["sources"]["text"]
    assert source["paths"] == [str(moved.resolve() / "text" / "*.jsonl.zst")]
    stream = open_source(DataSource(name="t", kind=source["kind"], paths=tuple(source["paths"])), "text")
    assert stream.next()[0]  # a document, read from the copy
