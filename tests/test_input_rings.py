"""How decoded images and tar members travel between the training process and the data workers:
through each worker's shared-memory ring (wrapping, waiting when full, the pipe for an answer larger
than the ring), and by reference for a plain local tar (a worker reads the bytes); the batches are
the in-process path's in every case, and nothing is left in /dev/shm."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest

from models.data import BadRecordError, get_tokenizer, mixed_stream
from models.data import readers as rd
from models.data import workers as wk
from models.steps import DataSource

TOK = get_tokenizer(DataSource(name="world", kind="world", options=(("seed", 5),)))
SIDE = 160  # 160 x 160 x 3 = 76,800 bytes: above SHARED_MIN_BYTES, so images use the ring


def _jpeg(rng: np.random.Generator, side: int = SIDE) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(out, "JPEG", quality=80)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("rings") / "pairs-000.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(48):
            _add(tar, f"{i:05d}.jpg", _jpeg(rng))
            _add(tar, f"{i:05d}.txt", f"a red ball {i} near the tree".encode())
    return path


def _batches(path, workers: int, n: int = 6) -> tuple[list, list, int]:
    """n batches, the rings' sizes, and how many batches a worker stacked (into a shared block)."""
    src = DataSource(name="pairs", kind="webdataset", paths=(str(path),))
    stream = mixed_stream(None, src, None, TOK, batch_size=4, seq_len=64, image_ratio=1.0, instruction_share=0.0,
                          image_size=SIDE, image_tokens=16, seed=0)
    pool = wk.start_workers(stream, workers)
    try:
        batches = [next(stream) for _ in range(n)]
        gathered = sum(id(b.images) in pool.buffers.names for b in batches) if pool else 0
        return batches, ([r.size for r in pool.rings] if pool else []), gathered
    finally:
        if pool is not None:
            pool.close()


def _shm() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("ring", ["default", "tight", "smaller than an answer", "none"])
def test_images_cross_the_ring_exactly_whether_it_wraps_fills_or_is_bypassed(shard, monkeypatch, ring):
    serial, _, _ = _batches(shard, 0)
    assert sum(b.images.shape[0] for b in serial) >= 20
    before = _shm()
    answer = wk.CHUNK * SIDE * SIDE * 3  # 8 images: ~615 KB
    if ring == "tight":  # two answers fit: the worker waits for room, and wraps every other answer
        monkeypatch.setattr(wk, "RING_BYTES", 2 * answer + 4096)
        monkeypatch.setattr(wk, "MIN_RING_BYTES", 1)
    elif ring == "smaller than an answer":  # every answer goes through the pipe
        monkeypatch.setattr(wk, "RING_BYTES", answer // 2)
        monkeypatch.setattr(wk, "MIN_RING_BYTES", 1)
    elif ring == "none":  # no room in /dev/shm: pipes only
        monkeypatch.setattr(wk, "MIN_RING_BYTES", 1 << 62)
    got, sizes, gathered = _batches(shard, 2)
    assert sizes == ([] if ring == "none" else [wk.RING_BYTES // wk.ALIGN * wk.ALIGN] * 2)
    # Through the rings a worker stacks each batch's images; through the pipes this process does.
    assert gathered == {"default": len(got), "smaller than an answer": 0, "none": 0}.get(ring, gathered)
    # Read after the pool closed: the batches' shared blocks stay mapped while their arrays live.
    for a, b in zip(serial, got):
        for field in ("tokens", "targets", "loss_kind", "images"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert _shm() == before  # every ring unlinked


def test_a_plain_tar_read_by_reference_gives_the_same_records_and_names_a_cut_member(shard, tmp_path):
    full = list(rd.iter_webdataset(str(shard)))
    refs = list(rd.iter_webdataset(str(shard), refs=True))
    assert all(isinstance(r["jpg"], rd.Member) for _, r in refs)
    assert [(i, rd.read_members(r, str(shard), i)) for i, r in refs] == full
    kept = rd.read_members(refs[0][1], str(shard), 0, images=False)  # the image left for decode_image
    assert isinstance(kept["jpg"], rd.Member) and kept["txt"] == full[0][1]["txt"]
    assert np.array_equal(rd.decode_image(kept["jpg"], SIDE, str(shard), 0),
                          rd.decode_image(full[0][1]["jpg"], SIDE, str(shard), 0))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes())
    refs = list(rd.iter_webdataset(str(cut), refs=True))
    with open(cut, "r+b") as f:  # the shard shrinks after its headers were read
        f.truncate(refs[30][1]["jpg"].offset + 100)
    with pytest.raises(BadRecordError, match=r"cut\.tar.*record 30.*member \.jpg is cut off"):
        for i, r in refs:
            rd.read_members(r, str(cut), i)
    with pytest.raises(BadRecordError, match=r"cut\.tar.*record 30.*member \.image is cut off"):
        rd.decode_image(refs[30][1]["jpg"], SIDE, str(cut), 30)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_fast_header_walk_reads_every_format_as_tarfile_does(tmp_path, fmt):
    """Long names (a ustar prefix, a GNU long-name header, a pax header), directories, empty members:
    the fast walk hands what it does not decode to tarfile and the members come out the same."""
    path = tmp_path / "t.tar"
    deep = "/".join(["folder"] * 12)  # > 100 characters: a prefix, a long-name or a pax header
    with tarfile.open(path, "w", format=fmt) as tar:
        tar.addfile(_dir("dir"))
        for i, name in enumerate(["a.jpg", "a.txt", f"{deep}/b.jpg", f"{deep}/b.txt", "c.txt", "é.txt"]):
            _add(tar, name, b"x" * (i * 300))
    with open(path, "rb") as f:
        fast = list(rd._plain_members(f, 0))
    with open(path, "rb") as f:
        slow = list(rd._tarfile_members(f, 0, "r:"))
    assert fast == slow and len([m for m in fast if m[4]]) == 6
    assert [r["__key__"] for _, r in rd.iter_webdataset(str(path))] == ["a", f"{deep}/b", "c", "é"]


def test_the_header_checksum_is_summed_as_python_sums_bytes_and_a_bad_one_goes_to_tarfile(tmp_path):
    """The walk sums a header's bytes with two Adler-32s (`_byte_sum`): equal to `sum` for any block,
    the all-0xFF one (the largest sum) included. A header with one byte changed fails the checksum:
    the walk hands the shard to tarfile, which ends there as if the archive did — but what follows
    the last member read is no end-of-archive block, so the shard ends with an error on the record
    being read (it may have lost members), not quietly short of a record. An in-memory file (no
    descriptor to `pread`) walks as a file on disk does."""
    rng = np.random.default_rng(3)
    for block in [bytes(512), b"\xff" * 512, *(rng.bytes(512) for _ in range(200))]:
        assert rd._byte_sum(block) == sum(block)
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("a.jpg", "a.txt", "b.jpg", "b.txt"):
            _add(tar, name, b"x" * 700)
    with open(path, "rb") as f:
        on_disk = list(rd._plain_members(f, 0))
    assert list(rd._plain_members(io.BytesIO(path.read_bytes()), 0)) == on_disk
    data = bytearray(path.read_bytes())
    data[on_disk[2][1] + 1] ^= 0x01  # a byte of b.jpg's name
    path.write_bytes(bytes(data))
    for refs in (False, True):
        (index, bad), = list(rd.iter_webdataset(str(path), refs=refs))
        assert index == 0 and isinstance(bad, BadRecordError)
        assert f"corrupt tar (ReadError: unreadable member header at byte {on_disk[2][1]})" in bad.reason


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_samples_a_fine_tune_keeps_are_copied_out_of_the_ring_and_streamed_ones_are_not(shard):
    """A fine-tune holds a megabatch's samples while it serves them (`map_records`): they are copied,
    or the worker's ring would stay full; a stream's samples live one batch and are read in place."""
    from functools import partial

    from models.data.sources import parse_wds

    parse = partial(parse_wds, image_size=SIDE)
    job = wk.ParseJob(parse, TOK, "pairs")
    pool = wk.WorkerPool(1, [job])
    try:
        records = [(r, str(shard), i) for i, r in rd.iter_webdataset(str(shard), refs=True)][:16]
        for r, _, _ in records:
            r.pop(rd.RESUME, None)
        prefetch = wk.Prefetch(pool, pool.job_key(job), 16)
        kept = prefetch.map_records(records)
        assert [s for s, _ in kept] == ["ok"] * 16
        assert all(sample[0].flags.owndata for _, sample in kept)
        streamed = iter(records)
        prefetch.fill(lambda: (*next(streamed), 0, {}))
        image = prefetch.next()[0][0]
        assert image.shape == (SIDE, SIDE, 3) and not image.flags.owndata  # a view of the ring
        assert np.array_equal(image, kept[0][1][0])
    finally:
        pool.close()


def test_the_rings_share_dev_shm_with_the_nodes_other_ranks(monkeypatch):
    """Every rank of a node sizes its rings at once from the same free space: each takes its share,
    and a share under MIN_RING_BYTES per worker means pipes, never a ring that could SIGBUS."""
    free = 64 << 20  # a container's default /dev/shm

    class Stat:
        f_bavail, f_frsize = free // 4096, 4096
    monkeypatch.setattr(wk.os, "statvfs", lambda path: Stat())
    for name in ("LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert wk._ring_bytes(4) == min(wk.RING_BYTES, free // 8)  # one rank, 4 workers: 8 MB each
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert wk._ring_bytes(4) == 0  # 8 ranks x 4 workers: 1 MB each, under MIN_RING_BYTES
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wk._ring_bytes(1) == free // 4  # 2 ranks x 1 worker: 16 MB each


def test_a_ranks_lazy_images_cross_as_references_and_batches_match_the_in_process_rank(shard):
    """On 2 ranks each stream parses every record but decodes only its own rows' images: the other
    images come back to the training process as tar references (no bytes), and each rank's batches
    equal that rank's without workers."""
    from models.data.types import LazyImage

    src = DataSource(name="pairs", kind="webdataset", paths=(str(shard),))

    def stream(rank: int):
        s = mixed_stream(None, src, None, TOK, batch_size=4, seq_len=64, image_ratio=1.0, instruction_share=0.0,
                         image_size=SIDE, image_tokens=16, seed=0)
        s.select_rows(rank, 2)
        return s
    for rank in (0, 1):
        serial = stream(rank)
        expect = [next(serial) for _ in range(4)]
        s = stream(rank)
        pool = wk.start_workers(s, 2)
        try:
            got = [next(s) for _ in range(4)]
            sample, _ = s.pairs.next()
            assert isinstance(sample[0], LazyImage) and isinstance(sample[0].args[0], rd.Member)
        finally:
            pool.close()
        for a, b in zip(expect, got):
            assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.images, b.images)
            assert len(a.images) > 0


def _ring_stream(shard):
    src = DataSource(name="pairs", kind="webdataset", paths=(str(shard),))
    return mixed_stream(None, src, None, TOK, batch_size=4, seq_len=64, image_ratio=1.0, instruction_share=0.0,
                        image_size=SIDE, image_tokens=16, seed=0)


def test_a_stream_served_one_batch_late_checkpoints_and_resumes_where_the_in_process_one_does(shard):
    """With workers a batch's images are stacked by a worker while the next batch is packed: the
    state after each batch is still the in-process one, a resume under another worker count (or
    of the same stream, its packed-ahead batch dropped while a worker may still be copying it)
    continues the same batches."""
    serial = _ring_stream(shard)
    expect = [(next(serial), serial.state_dict()) for _ in range(8)]
    stream = _ring_stream(shard)
    pool = wk.start_workers(stream, 2)
    try:
        got = [(next(stream), stream.state_dict()) for _ in range(3)]
        assert [s for _, s in got] == [s for _, s in expect[:3]]
        assert all(id(b.images) in pool.buffers.names for b, _ in got)  # stacked by a worker
        stream.load_state_dict(expect[1][1])  # back two batches, with batch 4 packed ahead
        again = [next(stream) for _ in range(3)]
    finally:
        pool.close()
    other = _ring_stream(shard)
    other.load_state_dict(got[-1][1])
    pool = wk.start_workers(other, 1)
    try:
        rest = [next(other) for _ in range(5)]
    finally:
        pool.close()
    for a, b in zip([b for b, _ in expect[2:5]] + [b for b, _ in expect[3:8]], again + rest):
        for field in ("tokens", "targets", "loss_kind", "images"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_a_worker_killed_while_batches_are_gathered_ends_the_wait_with_its_reason(shard):
    import signal

    stream = _ring_stream(shard)
    pool = wk.start_workers(stream, 2)
    try:
        next(stream)
        os.kill(pool.procs[0].pid, signal.SIGKILL)
        pool.procs[0].join(timeout=10)
        with pytest.raises(wk.DataWorkerError, match=r"data worker 0 \(pid \d+\) died \(killed by signal 9\)"):
            for _ in range(50):
                next(stream)
    finally:
        pool.close()
    assert not pool.buffers.blocks  # the batch blocks were unlinked


@pytest.mark.timeout(120)  # a deadlock would hang here: fail instead
def test_many_large_tasks_at_once_are_held_back_not_deadlocked_and_answered_in_order():
    """Tasks go through a pipe the training process writes itself, and answers too large for the
    ring come back through the worker's pipe: written blindly, 40 tasks of 100 KB each (answered
    with 100 KB each) fill both pipes, the worker blocked on its answers and this process on its
    tasks. Tasks that would overfill the pipe wait here, and go as answers come back."""
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(100_000) for _ in range(40)]
    pool = wk.WorkerPool(2, [bytes])
    try:
        key = pool.job_key(bytes)
        tickets = [pool.submit(key, (p,)) for p in payloads]
        assert any(pool.backlog), "every task went at once: nothing was held back"
        assert all(sum(n for _, n in unread) <= room + 100_008 for unread, room in zip(pool.unread, pool.room))
        assert [pool.result(t) for t in tickets] == payloads
        assert not any(pool.backlog) and not any(pool.unread)
    finally:
        pool.close()


def test_a_task_for_a_dead_worker_ends_with_its_reason():
    import signal
    import zlib

    pool = wk.WorkerPool(1, [zlib.crc32])
    try:
        key = pool.job_key(zlib.crc32)
        assert pool.result(pool.submit(key, (b"abc",))) == zlib.crc32(b"abc")
        os.kill(pool.procs[0].pid, signal.SIGKILL)
        pool.procs[0].join(timeout=10)
        with pytest.raises(wk.DataWorkerError, match=r"data worker 0 \(pid \d+\) died \(killed by signal 9\)"):
            pool.result(pool.submit(key, (b"abc",)))
    finally:
        pool.close()


@pytest.mark.timeout(120)
def test_a_worker_that_falls_behind_is_given_fewer_tasks_and_results_keep_their_order():
    """Tasks go to the worker with the fewest unanswered, not in a fixed turn: with worker 0
    stopped (SIGSTOP: on a shared core it would only be slow), it is given one task, and every
    other goes to worker 1, which answers each before the next is given out — and the results still come back in
    ticket order, each its own task's."""
    import signal
    import zlib

    pool = wk.WorkerPool(2, [zlib.crc32])
    try:
        key = pool.job_key(zlib.crc32)
        os.kill(pool.procs[0].pid, signal.SIGSTOP)
        payloads = [bytes([i]) * 100 for i in range(10)]
        tickets, owners = [], []
        for p in payloads:
            tickets.append(t := pool.submit(key, (p,)))
            owners.append(pool.owner[t])
            if owners[-1] == 1:  # answered (not yet read) before the next task is given out
                assert pool.outboxes[1].poll(30)
        assert owners.count(0) == 1, owners  # in a fixed turn: 5
        os.kill(pool.procs[0].pid, signal.SIGCONT)
        assert [pool.result(t) for t in tickets] == [zlib.crc32(p) for p in payloads]
        assert not pool.owner and not any(pool.unread)
    finally:
        os.kill(pool.procs[0].pid, signal.SIGCONT)
        pool.close()


def test_a_device_resize_batch_of_mixed_sizes_is_fitted_by_a_worker_as_in_process(tmp_path):
    """`resize = "device"` over images of two sizes: a batch holding both is fitted to the target
    (`stack_images`: bicubic on the CPU) — by the worker that stacks it, not the training process,
    with the in-process path's pixels."""
    path = tmp_path / "mixed-000.tar"
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(24):
            _add(tar, f"{i:05d}.jpg", _jpeg(rng, SIDE if i % 3 else SIDE + 16))
            _add(tar, f"{i:05d}.txt", f"a red ball {i}".encode())
    src = DataSource(name="pairs", kind="webdataset", paths=(str(path),), options=(("resize", "device"),))

    def make():
        return mixed_stream(None, src, None, TOK, batch_size=4, seq_len=64, image_ratio=1.0,
                            instruction_share=0.0, image_size=SIDE, image_tokens=16, seed=0)
    serial = make()
    expect = [next(serial) for _ in range(5)]
    stream = make()
    pool = wk.start_workers(stream, 2)
    try:
        got = [next(stream) for _ in range(5)]
        gathered = sum(id(b.images) in pool.buffers.names for b in got)
    finally:
        pool.close()
    assert gathered == 5
    for a, b in zip(expect, got):
        assert a.images.shape[1:] == (SIDE, SIDE, 3)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.images, b.images)
