"""The input pipeline: data workers change nothing but speed (the same batches for 0, 1 and 4
workers; a resume with another worker count continues the same sequence), a bad record found in a
worker reads as one found in the training process, a dead worker ends the wait with its reason,
and the pixels an HF encoder sees match its own image processor's."""

from __future__ import annotations

import io
import json
import os
import signal

import numpy as np
import pytest
import torch

from models.data import BadRecordError, finetune_epochs, get_tokenizer, mixed_stream, text_stream
from models.data.materialize import read_world_manifest, write_world
from models.data.readers import DeviceResize, decode_image
from models.data.workers import DataWorkerError, start_workers
from models.steps import DataSource

WORLD = DataSource(name="world", kind="world", options=(("seed", 5),))
TOK = get_tokenizer(WORLD)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, 5, text_docs=200, pairs=90, instructions=40, eval_items=4, shards=3)
    manifest = read_world_manifest(out)

    def src(role: str) -> DataSource:
        s = manifest["sources"][role]
        return DataSource(name=role, kind=s["kind"], paths=tuple(s["paths"]),
                          options=tuple(sorted(s.get("options", {}).items())))
    return src


def _streams(src):
    return {
        "mix": lambda: mixed_stream(src("text"), src("pairs"), src("instructions"), TOK, batch_size=4,
                                    seq_len=64, image_ratio=0.5, instruction_share=0.3, image_size=32,
                                    image_tokens=16, seed=0),
        "text": lambda: text_stream(src("text"), TOK, batch_size=3, seq_len=48, seed=1),
        "finetune": lambda: finetune_epochs(src("instructions"), TOK, batch_size=4, seq_len=96,
                                            image_size=32, image_tokens=16, epochs=2, seed=3,
                                            replay_source=src("text"), replay_share=0.25),
    }


def _run(make, workers: int, n: int, state: dict | None = None) -> list[tuple]:
    stream = make()
    if state is not None:
        stream.load_state_dict(state)
    pool = start_workers(stream, workers)
    try:
        return [(next(stream), json.dumps(stream.state_dict())) for _ in range(n)]
    finally:
        if pool is not None:
            pool.close()


def _same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for (x, sx), (y, sy) in zip(a, b):
        for field in ("tokens", "targets", "loss_kind", "images"):
            assert np.array_equal(getattr(x, field), getattr(y, field)), field
        assert x.images.dtype == y.images.dtype == np.uint8
        assert x.skipped_records == y.skipped_records and sx == sy


@pytest.mark.parametrize("kind", ["mix", "text", "finetune"])
def test_batches_are_bit_identical_for_0_1_and_4_workers_and_resume_across_counts(files, kind):
    make = _streams(files)[kind]
    n = 12 if kind != "finetune" else 8
    serial = _run(make, 0, n)
    assert any(b.images.shape[0] for b, _ in serial) or kind == "text"
    _same(serial, _run(make, 1, n))
    four = _run(make, 4, n)
    _same(serial, four)
    # a stream checkpointed by a 4-worker run (prefetch far ahead) resumes under 2 workers exactly
    cut = 5
    _same(serial[cut:], _run(make, 2, n - cut, state=json.loads(four[cut - 1][1])))


def _bad_text(tmp_path):
    good = [json.dumps({"text": f"a dax is red . {i}"}) for i in range(40)]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(good[:17] + ["{not json"] + good[17:]) + "\n")
    return DataSource(name="t", kind="jsonl", paths=(str(path),), options=(("shuffle_shards", False),))


def _served_before_error(make, workers: int) -> int:
    stream = make()
    pool = start_workers(stream, workers)
    served = 0
    try:
        with pytest.raises(BadRecordError):
            while True:
                next(stream)
                served += 1
    finally:
        if pool is not None:
            pool.close()
    return served


def test_a_bad_record_in_a_worker_reads_as_in_process_and_skips_count_the_same(tmp_path):
    source = _bad_text(tmp_path)

    def make(on_bad="error"):
        return lambda: text_stream(source, TOK, batch_size=2, seq_len=8, seed=0, on_bad_record=on_bad)
    messages = []
    for workers in (0, 2):
        with pytest.raises(BadRecordError) as err:
            _run(make(), workers, 30)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "a.jsonl: record 17: not valid JSON" in messages[0]
    assert "\n" not in messages[0]
    # Served one batch late with workers (the next is packed meanwhile), the error still comes
    # after the same batches: a step fails where it failed in process.
    assert _served_before_error(make(), 0) == _served_before_error(make(), 2) > 0
    _same(_run(make("skip"), 0, 30), _run(make("skip"), 2, 30))


def test_a_dead_worker_ends_the_wait_with_its_reason(files):
    stream = _streams(files)["mix"]()
    pool = start_workers(stream, 2)
    try:
        next(stream)
        os.kill(pool.procs[1].pid, signal.SIGKILL)
        pool.procs[1].join(timeout=10)
        with pytest.raises(DataWorkerError, match=r"data worker 1 \(pid \d+\) died \(killed by signal 9\)"):
            for _ in range(50):
                next(stream)
    finally:
        pool.close()


def test_a_device_resize_source_ships_decoded_images_that_the_encoder_resizes(tmp_path):
    """`resize = "device"`: batches hold the images as decoded (here 48 px for a 32 px encoder),
    the same for any worker count, and the encoder sees what a CPU resize would give it."""
    import tarfile

    from models.config import VisionConfig
    from models.vision import build_vision

    shard = tmp_path / "p.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(12):
            for ext, data in (("jpg", _jpeg(48, i)), ("txt", b"a dax is red")):
                info = tarfile.TarInfo(f"{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    def source(resize):
        return DataSource(name="p", kind="webdataset", paths=(str(shard),), options=(("resize", resize),))

    def make(resize):
        return lambda: mixed_stream(None, source(resize), None, TOK, batch_size=2, seq_len=64,
                                    image_ratio=1.0, instruction_share=0.0, image_size=32,
                                    image_tokens=16, seed=0)
    device = _run(make("device"), 0, 3)
    _same(device, _run(make("device"), 2, 3))
    cpu = _run(make("cpu"), 0, 3)
    assert device[0][0].images.shape[1:] == (48, 48, 3) and cpu[0][0].images.shape[1:] == (32, 32, 3)
    encoder = build_vision(VisionConfig(kind="patch", image_size=32, patch_size=8, frozen=False))
    for (d, _), (c, _) in zip(device, cpu):
        np.testing.assert_array_equal(d.tokens, c.tokens)
        a, b = encoder.eval()(torch.from_numpy(d.images)), encoder(torch.from_numpy(c.images))
        torch.testing.assert_close(a, b, atol=0.05, rtol=0)


def _jpeg(side: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    # smooth content plus noise, as photos have (pure noise would exaggerate resampling error)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([128 + 100 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("mode, options", [("RGB", {}), ("RGB", {"subsampling": 0}), ("RGB", {"subsampling": 1}),
                                           ("RGB", {"progressive": True}), ("L", {}), ("CMYK", {})])
def test_a_jpeg_decoded_by_libjpeg_turbo_directly_has_pils_pixels(monkeypatch, mode, options):
    """`_jpeg_direct` (simplejpeg) against Pillow's decode + convert("RGB"), bit for bit, for the
    chroma subsamplings photos use (4:2:0, 4:4:4, 4:2:2), progressive and greyscale JPEGs, through
    a CPU target of the image's own size and a device resize; a CMYK JPEG, a draft-sized one and
    one needing a CPU resize are left to Pillow."""
    from PIL import Image

    from models.data import readers as rd

    rng = np.random.default_rng(3)
    photo = np.asarray(Image.open(io.BytesIO(_jpeg(96, 5))))
    img = Image.fromarray(np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, **options)
    data = buf.getvalue()
    taken = []
    for size in (96, rd.DeviceResize(64), 48, rd.DeviceResize(48)):  # 48: a draft, a resize
        taken.append(rd._jpeg_direct(data, size) is not None)
        direct = rd.decode_image(data, size, "s.tar", 0)
        with monkeypatch.context() as m:
            m.setattr(rd, "_simplejpeg", None)
            by_pil = rd.decode_image(data, size, "s.tar", 0)
        assert direct.dtype == np.uint8 and direct.shape == by_pil.shape
        np.testing.assert_array_equal(direct, by_pil)
    assert taken == ([False] * 4 if mode == "CMYK" else [True, True, False, False])


@pytest.mark.parametrize("source_side, draft, device", [(384, False, False), (448, True, False),
                                                         (1024, True, False), (384, False, True),
                                                         (1024, True, True)])
def test_hf_encoder_pixels_match_the_siglip_processor(source_side, draft, device):
    """Full decode (384 → 224): identical to SiglipImageProcessor up to float rounding. JPEG draft
    mode (448 → 224 by the DCT, no resize; 1024 → 256, then 224): within 0.02 mean and 0.15 max
    absolute difference in normalised units ([-1, 1]; one grey level is 0.008). Measured: 0.014 and
    0.11 (448), 0.007 and 0.05 (1024). Resized on the device instead (`resize = "device"`: the
    uint8 copy is resized by torch's antialiased bicubic in `pixels`): within one grey level of
    PIL's (0.0079) without draft."""
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    from models.vision import pixels

    processor = getattr(transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor)(
        size={"height": 224, "width": 224}, resample=Image.Resampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    data = _jpeg(source_side)
    expected = processor(Image.open(io.BytesIO(data)), return_tensors="pt")["pixel_values"]
    ours = decode_image(data, DeviceResize(224) if device else 224, "x.tar", 0)
    side = {384: 384, 1024: 256}[source_side] if device else 224  # decoded, before the device's resize
    assert ours.dtype == np.uint8 and ours.shape == (side, side, 3)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
    got = pixels(torch.from_numpy(ours.copy())[None], mean, std, 224)
    diff = (got - expected.float()).abs()
    if not draft:
        assert float(diff.max()) < (0.008 if device else 1e-5)
    else:
        assert float(diff.mean()) < 0.02 and float(diff.max()) < 0.15


def test_status_and_the_runs_table_show_data_bound_steps(tmp_path):
    from models import stepfiles as sf
    from sweep.launch.cli import format_table
    from sweep.status import reconcile
    from tests.launch_helpers import small_plan

    plan = small_plan(tmp_path)
    encoder, evaluation = (next(s for s in plan.steps if s.kind == k) for k in ("encoder", "eval"))
    for step, share in ((encoder, 0.4), (evaluation, 0.05)):
        paths = sf.step_paths(plan.root, step.kind, step.step_id)
        paths.dir.mkdir(parents=True, exist_ok=True)
        sf.write_result(paths.dir, {"step_id": step.step_id, "kind": step.kind, "status": "done",
                                    "data_wait_share": share})
    table = format_table(plan, reconcile(plan))
    bound = [line for line in table.splitlines() if "data-bound" in line]
    assert len(bound) == 1 and encoder.step_id in bound[0] and "40% of step time" in bound[0]
    # the share itself, from metrics rows: 2 s of waiting in 4 s of steps (1,000 tokens at 500/s)
    rows = [(s, 1000 * s, "data_wait_s", 1.0) for s in (1, 2)] + \
           [(s, 1000 * s, "tokens_per_s", 500.0) for s in (1, 2)]
    assert sf.data_wait_share(rows) == pytest.approx(0.5)


def test_the_catalog_computes_the_same_share(tmp_path):
    import duckdb

    from analysis.queries import data_wait_shares

    con = duckdb.connect()
    con.execute("CREATE TABLE metrics (step_id VARCHAR, step BIGINT, tokens BIGINT, name VARCHAR, value DOUBLE)")
    con.execute("INSERT INTO metrics VALUES ('a', 1, 1000, 'data_wait_s', 1.0), ('a', 2, 2000, 'data_wait_s', 1.0),"
                "('a', 1, 1000, 'tokens_per_s', 500.0), ('a', 2, 2000, 'tokens_per_s', 500.0),"
                "('b', 1, 1000, 'tokens_per_s', 'nan')")
    shares = dict(data_wait_shares(con).iter_rows())
    assert shares == {"a": pytest.approx(0.5)}
