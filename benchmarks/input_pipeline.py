"""Input-pipeline throughput on files in the paper data's published layouts, at 79m shapes: per
stage, tokens/s of the old in-process path and of the data-worker loader with 1 and 2 workers, the
tokens each CPU-second buys, and the cores one GPU needs to be fed 1.5× an H200's 79m rate.

    .venv/bin/python benchmarks/input_pipeline.py [--seconds 6] [--rounds 3] [--skip-e2e]

The fixture is made here, seeded: a WebDataset shard of 384×384 JPEGs (~31 KB) with .txt captions,
DCLM-style jsonl.zst documents of 200–2,000 words, a byte-level BPE tokenizer.json trained on them
with `tokenizers`, LLaVA-format conversations over JPEG files, and the text pre-tokenised with
`models.data.tokenize`. Stages: trunk (seq 2048) on the fly and pre-tokenised; image stage (seq
1024, 196 image tokens of 224 px) at 20% and 100% image tokens; fine-tune on the conversations.

"old": the in-process path as it was — decode with an unconditional RGB conversion and no JPEG
draft, float32 normalisation of every image on the CPU, float32 tensors. "new N": this loader
(`models.data.workers`, uint8 images normalised on the device) with N worker processes. CPU time
is the training process's plus its workers' (from /proc), so "tokens per CPU-second" is what one
core buys; cores per H200 = 1.5 × 1.05M tokens/s ÷ that. Also measured: one resize on the CPU
(PIL bicubic) against one on the device after the uint8 copy (torch bicubic with antialias, run
on this CPU as a stand-in), and end to end the `1m` trunk trained from files through the loader
against the same step fed from memory (`train_throughput.py`'s baseline). Last line:
`result: image20 per-core speedup …x, 2-worker scaling …x, cores per H200 at 79m: image20 …, text …, pre-tokenised …`
where image20 is the image stage as a paper-scale run feeds it, text pre-tokenised and
`resize = "device"` ("image20 tok"; on-the-fly and CPU-resize figures are printed above it), the
per-core speedup compares tokens per CPU-second of the loader with one worker against the old
path, and the scaling compares tokens/s with 2 workers against 1: each the median of `--rounds`
rounds (old path, 1 worker, 2 workers measured in turn), all of them printed on the line above it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

H200_79M_TOKENS_PER_S = 1.05e6  # benchmarks/gpu_mfu.py at 79m on one H200
FEED_MARGIN = 1.5
IMAGE_SIZE, IMAGE_TOKENS, SOURCE_SIDE = 224, 196, 384


# -- fixture --------------------------------------------------------------------------------------

def _words(rng: np.random.Generator, n: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ter", "an", "sol", "ve", "ri", "du", "pen", "or", "la", "qua", "zi"]
    return ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(n)]


def _sentence(rng, vocab, p, n) -> str:
    return " ".join(vocab[i] for i in rng.choice(len(vocab), n, p=p))


def _photo(rng: np.random.Generator) -> bytes:
    """A 384×384 JPEG of ~31 KB: smooth colour fields plus grain, as photos compress."""
    from PIL import Image

    y, x = np.mgrid[0:SOURCE_SIDE, 0:SOURCE_SIDE] / SOURCE_SIDE
    f = rng.uniform(2, 9, (3, 2))
    base = np.stack([128 + 90 * np.sin(f[c, 0] * x + c) * np.cos(f[c, 1] * y - c) for c in range(3)], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)  # 31 KB at quality 80
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def make_fixture(root: Path, seed: int = 0, docs: int = 240, images: int = 192) -> dict:
    import zstandard
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = np.random.default_rng(seed)
    vocab = _words(rng, 20_000)
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()  # Zipf
    texts = [_sentence(rng, vocab, p, int(rng.integers(200, 2001))) for _ in range(docs)]
    (root / "text").mkdir()
    for s in range(4):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[s::4]).encode()
        (root / "text" / f"{s:05d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=16_384, special_tokens=["<|endoftext|>", "<|padding|>", "<image>", "<user>", "<assistant>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(root / "tokenizer.json"))
    photos = [_photo(rng) for _ in range(images)]
    (root / "images").mkdir()
    with tarfile.open(root / "pairs-00000.tar", "w") as tar:
        for i, jpg in enumerate(photos):
            (root / "images" / f"{i:05d}.jpg").write_bytes(jpg)
            caption = _sentence(rng, vocab, p, int(rng.integers(8, 21))).encode()
            for ext, data in (("jpg", jpg), ("txt", caption)):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    llava = [{"id": str(i), "image": f"images/{i % images:05d}.jpg", "conversations": [
        {"from": "human", "value": "<image>\n" + _sentence(rng, vocab, p, 12)},
        {"from": "gpt", "value": _sentence(rng, vocab, p, int(rng.integers(10, 60)))},
        {"from": "human", "value": _sentence(rng, vocab, p, 10)},
        {"from": "gpt", "value": _sentence(rng, vocab, p, int(rng.integers(10, 60)))}]} for i in range(256)]
    (root / "llava.json").write_text(json.dumps(llava))
    return {"jpeg_kb": np.mean([len(j) for j in photos]) / 1024, "docs": docs, "images": images}


def sources(root: Path) -> dict:
    from models.data.tokenize import write_tokens
    from models.steps import DataSource

    tok = (("tokenizer", str(root / "tokenizer.json")),)
    text = DataSource(name="text", kind="jsonl", paths=(str(root / "text" / "*.jsonl.zst"),), options=tok)
    if not (root / "tokens").exists():
        write_tokens(text, root / "tokens")
    pairs = DataSource(name="pairs", kind="webdataset", paths=(str(root / "pairs-00000.tar"),), options=tok)
    return {"text": text,
            "tokens": DataSource(name="tokens", kind="tokens", paths=(str(root / "tokens"),)),
            "pairs": pairs,
            "pairs, device resize": DataSource(name="pairs", kind="webdataset", paths=pairs.paths,
                                               options=tok + (("resize", "device"),)),
            "llava": DataSource(name="llava", kind="llava", paths=(str(root / "llava.json"),))}


def stages(src: dict) -> dict:
    from models import data as d

    tok = d.get_tokenizer(src["text"])
    device = src["pairs, device resize"]
    image = dict(seq_len=1024, instruction_share=0.0, image_size=IMAGE_SIZE, image_tokens=IMAGE_TOKENS, seed=0)
    return {
        "trunk": lambda: d.text_stream(src["text"], tok, batch_size=8, seq_len=2048, seed=0),
        "pre-tokenised": lambda: d.text_stream(src["tokens"], tok, batch_size=8, seq_len=2048, seed=0),
        "image20": lambda: d.mixed_stream(src["text"], src["pairs"], None, tok, batch_size=16,
                                          image_ratio=0.2, **image),
        "image100": lambda: d.mixed_stream(None, src["pairs"], None, tok, batch_size=16,
                                           image_ratio=1.0, **image),
        "image20 dev": lambda: d.mixed_stream(src["text"], device, None, tok, batch_size=16,
                                              image_ratio=0.2, **image),
        "image100 dev": lambda: d.mixed_stream(None, device, None, tok, batch_size=16,
                                               image_ratio=1.0, **image),
        "image20 tok": lambda: d.mixed_stream(src["tokens"], device, None, tok, batch_size=16,
                                              image_ratio=0.2, **image),
        "finetune": lambda: d.finetune_epochs(src["llava"], tok, batch_size=16, seq_len=1024,
                                              image_size=IMAGE_SIZE, image_tokens=IMAGE_TOKENS,
                                              epochs=1000, seed=0),
    }


# -- measuring ------------------------------------------------------------------------------------

def _cpu_s(pids: list[int]) -> float:
    """CPU seconds of this process (all threads) and of `pids` (children, from /proc)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def old_decode_image(data: bytes, image_size: int, shard: str, index: int) -> np.ndarray:
    """The decode before this loader: always convert, never draft."""
    from PIL import Image

    from models.data.errors import BadRecordError
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:
        raise BadRecordError(shard, index, f"undecodable image ({exc})") from None


def _old_batches(stream):
    """The old hand-off: float32 normalisation on the CPU, float32 tensors."""
    from models.data.world.render import normalise
    from models.stages.batches import to_tensors
    for batch in stream:
        if len(batch.images):
            batch.images = np.asarray(normalise(batch.images), dtype=np.float32)
        yield to_tensors(batch)


def measure(make, workers: int | None, seconds: float) -> dict:
    """tokens/s and tokens per CPU-second of a stage; workers None = the old in-process path."""
    from models.data import readers as rd
    from models.data.workers import start_workers
    from models.stages.batches import StreamDataset

    saved = rd.decode_image
    if workers is None:
        rd.decode_image = old_decode_image
    try:
        stream = make()
        pool = start_workers(stream, workers or 0)
        it = _old_batches(stream) if workers is None else (t for t, _ in StreamDataset(stream))
        pids = [p.pid for p in pool.procs] if pool else []
        next(it)  # warm-up: worker start, caches
        cpu0, main0, t0, tokens = _cpu_s(pids), time.process_time(), time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            tokens += next(it)["tokens"].numel()
        wall, cpu, main = time.perf_counter() - t0, _cpu_s(pids) - cpu0, time.process_time() - main0
        if pool:
            pool.close()
    finally:
        rd.decode_image = saved
    return {"tokens_per_s": tokens / wall, "per_cpu_s": tokens / max(cpu, 1e-9), "cpu_share": cpu / wall,
            "main_per_cpu_s": tokens / max(main, 1e-9)}


def resize_costs(root: Path, n: int = 40) -> dict:
    """ms per image: decode by Pillow, decode by libjpeg-turbo straight to RGB (what a device-resize
    source's workers run: `readers._jpeg_direct`), PIL bicubic resize on the CPU, and torch
    bicubic-antialias resize of the uint8 copy (as the device would, here on the CPU)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    jpgs = [p.read_bytes() for p in sorted((root / "images").iterdir())[:n]]

    def timed(fn) -> float:  # CPU time: a shared machine's load does not inflate it
        fn(jpgs[0])
        t = time.process_time()
        for j in jpgs:
            fn(j)
        return (time.process_time() - t) / len(jpgs) * 1e3

    def decode(j):
        return np.asarray(Image.open(io.BytesIO(j)))
    decoded = [decode(j) for j in jpgs]
    cpu = timed(lambda j: Image.open(io.BytesIO(j)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))
    batch = torch.from_numpy(np.stack(decoded))
    t = time.process_time()
    x = batch.permute(0, 3, 1, 2).float()
    F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", antialias=True, align_corners=False)
    device = (time.process_time() - t) / len(jpgs) * 1e3
    from models.data.readers import DeviceResize, _jpeg_direct

    direct = timed(lambda j: _jpeg_direct(j, DeviceResize(IMAGE_SIZE))) if _jpeg_direct(
        jpgs[0], DeviceResize(IMAGE_SIZE)) is not None else float("nan")  # nan: simplejpeg missing
    return {"decode": timed(decode), "direct": direct, "decode+cpu_resize": cpu, "torch_resize": device}


def end_to_end(steps: int = 60, rounds: int = 3) -> float:
    """The 1m trunk's tokens/s trained from files through the loader (1 worker) ÷ fed from memory."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from train_throughput import ListStream, StepTimes, tokens_per_s

    from models import data as d
    from models.config import OptimConfig, RunOptions
    from models.data.materialize import read_world_manifest, write_world
    from models.presets import get_preset
    from models.schedules import trunk_schedule
    from models.stages import trainer as base
    from models.stages.checkpointer import Checkpointer
    from models.stages.lm import TrunkModule
    from models.steps import DataSource
    from models.vlm import VLM

    preset = get_preset("1m")
    train, lm = preset.train, preset.model.lm
    with tempfile.TemporaryDirectory() as tmp:
        write_world(Path(tmp) / "w", 0, text_docs=2000, pairs=4, instructions=4, eval_items=4, shards=4)
        s = read_world_manifest(Path(tmp) / "w")["sources"]["text"]
        src = DataSource(name="text", kind=s["kind"], paths=tuple(s["paths"]),
                         options=tuple(sorted(s.get("options", {}).items())))
        tok = d.get_tokenizer(src)

        def files():
            return d.text_stream(src, tok, batch_size=train.batch_size, seq_len=train.seq_len, seed=0)
        memory = ListStream([next(files()) for _ in range(8)])
        best = {"files": 0.0, "memory": 0.0}
        for r in range(rounds):
            for name, stream, workers in (("files", files(), 1), ("memory", memory, 0)):
                torch.manual_seed(0)
                module = TrunkModule(VLM(lm), trunk_schedule(train, steps), optim=OptimConfig(),
                                     tokens_per_step=train.batch_size * train.seq_len, image_id=tok.image_id)
                timer, options = StepTimes(), RunOptions(checkpoint_every_s=math.inf, accelerator="cpu",
                                                         data_workers=workers)
                factory = base.make_trainer
                base.make_trainer = (lambda o, m, cbs, factory=factory, timer=timer, **kw:
                                     factory(o, m, cbs + [timer], **kw))
                try:
                    base.fit(module, stream, options=options, total_steps=steps, checkpointer=Checkpointer(
                        latest=Path(tmp) / f"{name}{r}.pt", total_steps=steps, options=options))
                finally:
                    base.make_trainer = factory
                best[name] = max(best[name], tokens_per_s(timer.times, 5, train.batch_size * train.seq_len))
    return best["files"] / best["memory"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per stage and loader")
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the 1m end-to-end run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the result line's stage (old, 1 and 2 workers in turn); medians")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        info = make_fixture(root)
        src = sources(root)
        print(f"fixture: {info['docs']} docs, {info['images']} JPEGs of {info['jpeg_kb']:.1f} KB "
              f"({time.perf_counter() - t:.0f} s); load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        results: dict = {}
        print(f"{'stage':<14}{'loader':<8}{'tokens/s':>12}{'tok/CPU-s':>12}{'CPU use':>9}{'ceiling':>13}")
        made = stages(src)
        for stage, make in made.items():
            loaders = [("new 1", 1), ("new 2", 2)]
            if stage == "pre-tokenised":  # nothing of it runs in workers: the in-process loader is it
                loaders = [("new 0", 0)]
            elif not stage.endswith(("dev", "tok")):  # the old path had no device resize, no tokens
                loaders = [("old", None), ("new 0", 0)] + loaders
            for name, workers in loaders:
                r = measure(make, workers, args.seconds)
                results[(stage, name)] = r
                print(f"{stage:<14}{name:<8}{r['tokens_per_s']:>12,.0f}{r['per_cpu_s']:>12,.0f}"
                      f"{r['cpu_share']:>9.2f}{r['main_per_cpu_s']:>13,.0f}", flush=True)
        # More rounds of the result line's stage (see there): old path, 1 and 2 workers in turn.
        rounds = [tuple(results[k] for k in (("image20", "old"), ("image20 tok", "new 1"), ("image20 tok", "new 2")))]
        for _ in range(args.rounds - 1):
            rounds.append((measure(made["image20"], None, args.seconds), measure(made["image20 tok"], 1, args.seconds),
                           measure(made["image20 tok"], 2, args.seconds)))
        costs = resize_costs(root)
        print("per image, CPU ms: decode {decode:.2f} (Pillow), {direct:.2f} (libjpeg-turbo to RGB, "
              "device-resize sources); decode + PIL bicubic resize on the CPU "
              "{decode+cpu_resize:.2f}; torch bicubic-antialias resize (device stand-in, on this CPU) "
              "{torch_resize:.2f}".format(**costs))
    if not args.skip_e2e:
        print(f"end to end, 1m trunk from files (1 worker) / from memory: {end_to_end():.2f}x")
    need = FEED_MARGIN * H200_79M_TOKENS_PER_S

    def cores(stage: str, name: str) -> int:
        return math.ceil(need / results[(stage, name)]["per_cpu_s"])
    for stage in ("trunk", "image20", "image100", "image20 dev", "image100 dev", "image20 tok", "finetune",
                  "pre-tokenised"):
        name = "new 0" if stage == "pre-tokenised" else "new 2"
        print(f"cores per H200 at 79m, {stage}: {cores(stage, name)}")
    old = results[("image20", "old")]["per_cpu_s"]
    for stage in ("image20", "image20 dev", "image20 tok"):
        r1, r2 = results[(stage, "new 1")], results[(stage, "new 2")]
        print(f"{stage}: per-core speedup over old (new 1) {r1['per_cpu_s'] / old:.1f}x, 2-worker scaling "
              f"{r2['tokens_per_s'] / r1['tokens_per_s']:.2f}x (bound on {os.cpu_count()} cores by the training "
              f"process's share: {_scaling_bound(r1):.2f}x)")
    # The result line: the image stage as a paper-scale run feeds it — text pre-tokenised (`vlmsweep
    # tokenize`) and each image's one resize on the device; the lines above give the other ways. Its
    # two ratios are the medians of `--rounds` rounds (old path, 1 worker, 2 workers in turn, the
    # table's run the first): one run of a few seconds on a shared 2-core VM moves by ±10%.
    stage = "image20 tok"
    speedups = sorted(one["per_cpu_s"] / o["per_cpu_s"] for o, one, _ in rounds)
    scalings = sorted(two["tokens_per_s"] / one["tokens_per_s"] for _, one, two in rounds)
    speedup, scaling = float(np.median(speedups)), float(np.median(scalings))
    print(f"{stage} over {len(rounds)} rounds: per-core speedup {', '.join(f'{x:.1f}' for x in speedups)}x, "
          f"2-worker scaling {', '.join(f'{x:.2f}' for x in scalings)}x (medians below)")
    print(f"result: image20 per-core speedup {speedup:.1f}x, 2-worker scaling {scaling:.2f}x, cores per "
          f"H200 at 79m: image20 {cores(stage, 'new 2')}, text {cores('trunk', 'new 2')}, "
          f"pre-tokenised {cores('pre-tokenised', 'new 0')}")


def _scaling_bound(one: dict) -> float:
    """The most 2 workers can give over 1 on this machine's cores when the training process needs
    `m` CPU-seconds per token beside the workers' `w`: one worker runs at 1/w; two at most at 2/w,
    at cores/(m + w) (the CPUs they share with the training process) and at 1/m (the training
    process's own ceiling)."""
    m, total = 1 / one["main_per_cpu_s"], 1 / one["per_cpu_s"]
    w = total - m
    return min(2.0, (os.cpu_count() or 2) * w / (m + w), w / m) if w > 0 else float("nan")


if __name__ == "__main__":
    main()
