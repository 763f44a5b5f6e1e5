"""Data worker processes: an ordered parallel map that parses, decodes and tokenises records ahead
of the training step, outside the training process.

The training process keeps the cheap, order-deciding work — walking the shards' record order and
packing rows — and hands each record's expensive work (JPEG decode and resize, tokenisation) to a
pool of spawned processes as a numbered task. Each task goes to the worker with the fewest tasks
not answered (`WorkerPool._least_loaded`), each worker answers in the order it was asked, and the
stream takes results in ticket order: which worker parsed a record changes nothing, so the samples
a stream sees, and therefore every batch, do not depend on N or on timing. Prefetched
results are only a cache: a stream's checkpointed state is the position of the last record it
*consumed*, and a resume (with any worker count) drops what was in flight.

Little crosses between the processes: a plain local tar's members go out as references the worker
reads itself (`readers.Member`), and decoded images come back through a shared-memory ring per
worker (`_RingWriter`, `_RingReader`). The training process never touches their bytes: once a
batch is packed, a worker copies its images from the rings into a shared batch block (`gather`,
`_BatchBuffers`), asked through a pipe of its own that it reads between two records, while the
training process packs the next batch (`models.data.streams.BatchStream` serves batches one late).

Why not torchdata's `StatefulDataLoader`: it runs one copy of an IterableDataset per worker and
interleaves their batches, so the batch sequence (and what a checkpoint means) depends on the
worker count; making our packed, mixed streams shard across its workers would split the single
packing state that decides every row. An ordered map keeps that state in one place and still
parallelises the part that costs (decode, tokenise): ~95% of a record's time.

A worker that dies (OOM killer, SIGKILL) ends the wait with `DataWorkerError` naming it, its exit
signal and the record it held, never a hang; a worker whose parent died exits by itself. A bad
record found in a worker comes back as the same `BadRecordError` (shard, record, reason) the
in-process path raises, so `on_bad_record` behaves identically.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import signal
import time
import weakref
from collections import deque
from multiprocessing import shared_memory
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Sequence

import numpy as np

from models.data.errors import BadRecordError
from models.data.readers import fit_image, read_members
from models.data.tokenizer import encode_chunks
from models.spawn import bare_main

POLL_S = 0.5  # how often a wait checks that the workers are alive
WORKER_NICENESS = 5  # measured on 2 cores, one worker: 10% less CPU a batch (12.3-13.5 vs 14.1-15.0 ms)
URGENT_POLL_S = 0.002  # how often an idle worker looks for an urgent task (a batch's gather)
# The size asked of Linux (default 64 KiB) for a worker's task and answer pipes. A worker's records
# in flight must fit both ways: text goes out as bytes (8 DCLM documents a task, ~50 KB) and comes
# back as token arrays too small for the ring (8 a task, ~34 KB). In 64 KiB two answers filled the
# pipe and a worker sat blocked (26% of its time, 2 workers, image stage tokenising on the fly) until
# the training process wanted one of its answers. 256 KiB each keeps 8 ranks × 12 workers within
# the default per-user allowance for large pipes (64 MiB; beyond it Linux refuses the size asked).
PIPE_BYTES = 1 << 18


def _widen(fd: int, size: int) -> int:
    """Ask for a pipe of `size` bytes; the bytes it surely holds (less a margin for framing)."""
    try:
        import fcntl
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
            except OSError:  # over the user's limit on large pipes: the size it has
                pass
            return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) - 1024
    except ImportError:  # no fcntl (Windows)
        pass
    return 16_384 - 1024  # the least a pipe holds elsewhere (macOS starts at 16 KiB)


class DataWorkerError(RuntimeError):
    """A data worker process died: the step fails with this reason (it resumes from a checkpoint)."""


def _materialise(image: Any) -> Any:
    return image() if callable(image) else image


def _run(jobs: Sequence[Callable], task: tuple, writer: "_RingWriter | None", outbox: Any) -> bool:
    """Run one task and send its answer; False once the pool is stopping."""
    ticket, key, args = task
    try:
        out = ("ok", jobs[key](*args))
    except BadRecordError as err:  # its own constructor does not survive pickling: send fields
        out = ("bad", (err.shard, err.index, err.reason))
    except Exception as exc:  # noqa: BLE001 — reported in the training process, with its type
        out = ("error", f"{type(exc).__name__}: {exc}")
    value = writer.put(out[1]) if writer else out[1]
    if value is _STOPPED:
        return False
    outbox.send((ticket, out[0], value))
    return True


def _worker(jobs: Sequence[Callable], inbox: Any, urgent: Any, outbox: Any, parent: int, stop: Any,
            ring: tuple | None, rings: list[str]) -> None:
    global _between
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process owns signals
    # Below the training process: where cores are short, it (packing, driving the GPU) goes first
    # and its workers take the rest, instead of a woken worker displacing it from its core.
    os.nice(WORKER_NICENESS)
    _hold_freed_memory()
    writer = _RingWriter(*ring, stop=stop, parent=parent) if ring else None
    _RINGS[:] = rings
    if writer is not None:  # its own ring is mapped already
        _ATTACHED[ring[0]] = writer.block

    def serve_urgent() -> None:  # a batch's gather: between two records, not after the queue
        while urgent.poll(0):
            _run(jobs, urgent.recv(), writer, outbox)
    _between = serve_urgent
    idle = 0.0
    while not stop.value:  # set by `close`: the tasks still queued are not wanted
        serve_urgent()
        try:
            # A short wait: a gather asked for while this worker has nothing queued starts soon.
            task = inbox.recv() if inbox.poll(URGENT_POLL_S) else None
        except (EOFError, OSError):  # the training process is gone
            return
        if task is None:
            idle += URGENT_POLL_S
            if idle >= POLL_S:
                idle = 0.0
                if os.getppid() != parent:  # the training process was killed: nobody will ask again
                    return
            continue
        idle = 0.0
        if not _run(jobs, task, writer, outbox):
            return


def _hold_freed_memory() -> None:
    """Keep freed memory in this process for the next image, instead of glibc's default: a block
    over 128 KiB is mapped afresh and unmapped when freed (or the heap's top trimmed back), so each
    decoded 384-pixel image (442 KB) faulted ~110 new pages in. Measured, one worker from tokens:
    1.55M → 2.0–2.1M tokens/s with libjpeg-turbo's decoder (Pillow's own arena had hidden it).
    Glibc only (elsewhere nothing changes); the worker holds its peak, a few batches of images."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: its largest value on 64-bit
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_between: Callable[[], None] | None = None  # in a worker: serve urgent tasks (called between records)
_RINGS: list[str] = []  # in a worker: every worker's ring, by index (a gather reads them all)
_ATTACHED: dict[str, shared_memory.SharedMemory] = {}


def _block(name: str) -> shared_memory.SharedMemory:
    if name not in _ATTACHED:
        _ATTACHED[name] = shared_memory.SharedMemory(name=name)
    return _ATTACHED[name]


def _gather(dest: str, parts: list[tuple[int, int, int, tuple]], size: int | None = None) -> None:
    """Copy `parts` (ring index, offset, bytes, shape) of the workers' rings one after another into
    the shared block `dest`: a batch's images stacked here, not in the training process. With
    `size` (images of different sizes) each is fitted to size × size on the way (`fit_image`, what
    `stack_images` does in process)."""
    out = _block(dest).buf
    if size is None:
        at = 0
        for w, offset, n, _ in parts:
            out[at:at + n] = _block(_RINGS[w]).buf[offset:offset + n]
            at += n
        return
    stacked = np.frombuffer(out, np.uint8, len(parts) * size * size * 3).reshape(len(parts), size, size, 3)
    for k, (w, offset, n, shape) in enumerate(parts):
        stacked[k] = fit_image(np.frombuffer(_block(_RINGS[w]).buf, np.uint8, n, offset).reshape(shape), size)


SHARED_MIN_BYTES = 1 << 16  # arrays this large (images) travel through the shared ring, not the pipe
RING_BYTES = 32 << 20  # each worker's ring; smaller where /dev/shm holds less (see `_ring_bytes`)
MIN_RING_BYTES = 4 << 20  # less room than this per worker in /dev/shm: answers through the pipes
RING_WAIT_S = 0.05  # a worker waits this long for room in its ring, then uses the pipe
ALIGN = 64
_STOPPED = object()


def _arrays(value: Any, found: list) -> Any:
    """`value` with each large numpy array replaced by its index in `found` (nested lists/tuples)."""
    if isinstance(value, np.ndarray) and value.nbytes >= SHARED_MIN_BYTES:
        found.append(value)
        return _SharedSlot(len(found) - 1)
    if isinstance(value, tuple) or (isinstance(value, list) and value and not isinstance(value[0], int)):
        return type(value)(_arrays(v, found) for v in value)
    return value  # token ids (a list of ints) hold no array: not walked


class _SharedSlot(int):
    """Where an array of a task's answer lies in its stretch of the ring."""

    def __reduce__(self):
        return _SharedSlot, (int(self),)


def _ring_bytes(workers: int) -> int:
    """Ring size per worker: RING_BYTES, or what half of /dev/shm's free space allows, shared by the
    node's ranks, each starting its workers at once (a container's /dev/shm is often 64 MB; writing
    past it is SIGBUS); 0 (answers through the pipes) where less than MIN_RING_BYTES is free per
    worker."""
    from models.distributed import ranks_from_env

    try:
        per_node = max(1, ranks_from_env().per_node)
    except ValueError:  # a malformed rank variable is the launcher's error to report, not this one
        per_node = 1
    try:
        st = os.statvfs("/dev/shm")
        room = st.f_bavail * st.f_frsize // (2 * workers * per_node)
    except OSError:
        room = RING_BYTES
    return 0 if room < MIN_RING_BYTES else min(RING_BYTES, room) // ALIGN * ALIGN


class _RingWriter:
    """A worker's side of its ring: one producer, one consumer (the training process), answers in
    order. An answer's large arrays (decoded images) are copied into the next free stretch — wrapping
    to the start when the end is too near — and the pipe carries only where they lie. The training
    process reads them in place (`_RingReader`) and frees each stretch once nothing refers to it
    (the batch they went into was stacked). Creating and unlinking a shared-memory block per answer
    cost ~1 ms of the training process's time per 8 images; the ring costs one memcpy here and the
    batch's stacking there. A ring still full after RING_WAIT_S (the training process holds more
    images than it can take, e.g. a batch's worth being assembled) sends the answer through the
    pipe instead: waiting longer could wait for what waits for this worker."""

    def __init__(self, name: str, tail: Any, *, stop: Any, parent: int) -> None:
        self.block = shared_memory.SharedMemory(name=name)
        self.size, self.tail, self.head, self.stop, self.parent = self.block.size, tail, 0, stop, parent
        self.stuck_at = -1  # the tail when a wait for room last gave up

    def put(self, value: Any) -> Any:
        found: list = []
        value = _arrays(value, found)
        need = sum(-(-a.nbytes // ALIGN) * ALIGN for a in found)
        if not found or need > self.size:  # nothing large, or larger than the ring: the pipe
            return _restore(value, found)
        start = self.head
        if start % self.size + need > self.size:  # not enough before the end: wrap
            start += self.size - start % self.size
        deadline = time.monotonic() + RING_WAIT_S
        while start + need - self.tail.value > self.size:  # wait for the consumer to free room
            if self.stop.value or os.getppid() != self.parent:
                return _STOPPED
            if self.tail.value == self.stuck_at or time.monotonic() > deadline:
                # Still no room where the last wait gave up: the pipe, at once, until room is made.
                self.stuck_at = self.tail.value
                return _restore(value, found)
            time.sleep(0.0002)
        layout, at = [], start % self.size
        for a in found:
            np.ndarray(a.shape, a.dtype, buffer=self.block.buf, offset=at)[...] = a
            layout.append((a.shape, a.dtype.str, at))
            at += -(-a.nbytes // ALIGN) * ALIGN
        self.head = start + need
        return ("__ring__", self.head, layout, value)


def _restore(value: Any, arrays: list) -> Any:
    """`value` with its `_SharedSlot`s replaced by `arrays`."""
    if isinstance(value, _SharedSlot):
        return arrays[value]
    if isinstance(value, tuple) or (isinstance(value, list) and value and not isinstance(value[0], int)):
        return type(value)(_restore(x, arrays) for x in value)
    return value


class RingView(np.ndarray):
    """An array of a worker's answer, read in place from its ring: `where` = (worker, offset) of
    its bytes there (None for arrays derived from it), so a gather can copy it without this process
    touching the bytes."""

    where: tuple[int, int] | None = None


def _view(block: Any, shape: tuple, dtype: Any, offset: int, kind: type = np.ndarray) -> np.ndarray:
    """An array over `block`'s bytes that holds an export of its mapping: closing the block while
    the array lives raises BufferError (caught by `_Ring.close`) instead of unmapping it under the
    array (`np.ndarray(buffer=...)` holds no export: a read after `close` would be a segfault)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    return np.frombuffer(block.buf, dtype, count, offset).reshape(shape).view(kind)


class _RingReader:
    """The training process's side of a worker's ring: an answer's arrays are views of the ring,
    and its stretch is freed — `tail` moved past it, in ring order — once every view of it is gone
    (a weakref finalizer per array; numpy views keep their base alive, so a slice counts too)."""

    def __init__(self, block: Any, tail: Any, index: int) -> None:
        self.block, self.tail, self.index = block, tail, index
        self.held: deque = deque()  # [end, arrays still referenced] per answer, oldest first

    def take(self, value: Any) -> Any:
        if not (isinstance(value, tuple) and len(value) == 4 and value[0] == "__ring__"):
            return value
        _, end, layout, value = value
        entry = [end, len(layout)]
        self.held.append(entry)
        arrays = [_view(self.block, shape, dt, at, RingView) for shape, dt, at in layout]
        for a, (_, _, at) in zip(arrays, layout):
            a.where = (self.index, at)
            weakref.finalize(a, self._release, entry)
        return _restore(value, arrays)

    def _release(self, entry: list) -> None:
        entry[1] -= 1
        while self.held and self.held[0][1] == 0:
            self.tail.value = self.held.popleft()[0]


class _Ring(shared_memory.SharedMemory):
    """A ring's block, whose `close` leaves the mapping to the views still using it (images not yet
    stacked): it goes with the last of them, instead of raising BufferError."""

    def close(self) -> None:
        try:
            super().close()
        except BufferError:
            pass


class WorkerPool:
    """N worker processes running `jobs[key](*args)` tasks; `submit` numbers them, `result` returns
    each task's value (or raises its BadRecordError) and may be asked in any order."""

    def __init__(self, workers: int, jobs: Sequence[Callable]) -> None:
        if workers < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {workers}")
        ctx = mp.get_context("spawn")  # no fork of a process holding torch threads and CUDA state
        self.jobs = [_materialise, _gather, *jobs]
        # Tasks go through a pipe per worker written by this thread (an mp.Queue's feeder thread
        # cost the training process ~20% of its time a batch, in GIL hand-offs); `_send` keeps a
        # write from ever blocking, so a worker waiting on this process never deadlocks it.
        tasks = [ctx.Pipe(duplex=False) for _ in range(workers)]
        self.inboxes = [writer for _, writer in tasks]
        self.room = [_widen(writer.fileno(), PIPE_BYTES) for writer in self.inboxes]
        self.unread: list[deque] = [deque() for _ in range(workers)]  # (ticket, bytes) sent, not answered
        self.backlog: list[deque] = [deque() for _ in range(workers)]  # (ticket, pickled task) not sent yet
        urgent = [ctx.Pipe(duplex=False) for _ in range(workers)]
        self.urgent = [writer for _, writer in urgent]
        # Answers come back through one-way pipes whose write end only the worker holds: a worker
        # killed half-way through an answer is end-of-file here, never a wait for bytes that cannot
        # come (an mp.Queue's pipe is held open at both ends by this process too).
        pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
        self.outboxes = [reader for reader, _ in pipes]
        for reader in self.outboxes:
            _widen(reader.fileno(), PIPE_BYTES)
        writers = [writer for _, writer in pipes]
        # A lock-free flag: a worker killed while holding an Event's lock would hang `close`.
        self.stop = ctx.RawValue("b", 0)
        self.rings, self.tails = self._make_rings(ctx, workers)
        self.readers = [_RingReader(r, t, w) for w, (r, t) in enumerate(zip(self.rings, self.tails))]
        names = [r.name for r in self.rings]
        self.procs = [ctx.Process(target=_worker, daemon=True, name=f"vlmsweep-data-{w}", args=(
                          self.jobs, i, u, o, os.getpid(), self.stop,
                          (self.rings[w].name, self.tails[w]) if self.rings else None, names))
                      for w, ((i, _), (u, _), o) in enumerate(zip(tasks, urgent, writers))]
        with bare_main():
            for p in self.procs:
                p.start()
        for writer in writers:
            writer.close()
        for reader, _ in (*urgent, *tasks):
            reader.close()
        self.next_ticket = 0
        self.buffers = _BatchBuffers()
        self.gathers = 0  # gathers asked for: gather g is ticket -g
        self.owner: dict[int, int] = {}  # ticket → the worker it went to, until its result is taken
        self.gathering: dict[int, Gathering] = {}  # ticket → a gather not answered yet
        self.done: dict[int, tuple] = {}
        self.about: dict[int, str] = {}  # ticket → what it is (for a dead worker's message)
        self.cancelled: set[int] = set()

    @staticmethod
    def _make_rings(ctx: Any, workers: int) -> tuple[list, list]:
        """One shared-memory ring per worker (unlinked by `close`; by the resource tracker if this
        process is killed), with the counter of what the training process has taken from it."""
        size = _ring_bytes(workers)
        if not size:
            return [], []
        return ([_Ring(create=True, size=size) for _ in range(workers)],
                [ctx.RawValue("Q", 0) for _ in range(workers)])

    def _take(self, w: int, value: Any) -> Any:
        """Worker w's answer, its arrays read in place from its ring (taken on receipt, in ring order)."""
        return self.readers[w].take(value) if self.rings else value

    @property
    def size(self) -> int:
        return len(self.procs)

    def job_key(self, job: Callable) -> int:
        """The key of `job` (one of the jobs the pool was made with)."""
        return next(k for k, j in enumerate(self.jobs) if j is job)

    def submit(self, key: int, args: tuple, about: str = "") -> int:
        ticket, self.next_ticket = self.next_ticket, self.next_ticket + 1
        self.about[ticket] = about
        self.owner[ticket] = w = self._least_loaded()
        self.backlog[w].append((ticket, ForkingPickler.dumps((ticket, key, args))))
        self._send(w)
        return ticket

    def _least_loaded(self) -> int:
        """The worker to give the next task: the one with the fewest tasks not answered, ties in
        turn. Answers already back are read first, so a worker that got ahead is seen to have.
        Not task t to worker t mod N: the results are read in ticket order either way, but a
        fixed turn ties every worker to the slowest one's pace — on a machine whose cores the
        training process shares, the worker beside it fell behind and the others sat idle with
        nothing left to do (2 workers on 2 cores: 9% of the CPU time idle)."""
        for w, box in enumerate(self.outboxes):
            while self.unread[w] and box.poll(0):
                self._receive(w, self.unread[w][0][0])
        n = self.size
        first = self.next_ticket % n
        return min(((first + i) % n for i in range(n)),
                   key=lambda w: len(self.unread[w]) + len(self.backlog[w]))

    def _send(self, w: int) -> None:
        """Write worker w's tasks not sent yet while its pipe surely has room: the bytes of tasks
        it has not answered may all still be in the pipe (it reads a task only when it starts it),
        so they are counted against its room (`PIPE_BYTES`) until its answer comes back. A task larger
        than the room goes alone, into an empty pipe, which the worker is reading (or will be: what
        it may be doing instead, a gather, does not wait for this process)."""
        backlog, unread = self.backlog[w], self.unread[w]
        while backlog:
            ticket, data = backlog[0]
            held = sum(n for _, n in unread)
            if held and held + len(data) + 8 > self.room[w]:
                return
            try:
                self.inboxes[w].send_bytes(data)
            except OSError:
                self._lost(w, ticket, "its tasks' pipe")
            backlog.popleft()
            unread.append((ticket, len(data) + 8))

    def cancel(self, tickets) -> None:
        """Forget tasks whose results are no longer wanted (a stream resumed elsewhere)."""
        for t in tickets:
            if self.done.pop(t, None) is None:
                self.cancelled.add(t)
            self.about.pop(t, None)
            self.owner.pop(t, None)

    def result(self, ticket: int) -> Any:
        w = self.owner[ticket]
        while ticket not in self.done:
            self._drain(w, ticket)
        del self.owner[ticket]
        self.about.pop(ticket, None)
        status, value = self.done.pop(ticket)
        if status == "bad":
            raise BadRecordError(*value)
        if status == "error":
            raise DataWorkerError(f"data worker {w} failed on {self.about.get(ticket) or 'a task'}: {value}")
        return value

    def gather(self, images: list, image_size: int | None = None) -> "Gathering | None":
        """Have a worker stack `images` (views of the rings) into a shared batch buffer, as
        `readers.stack_images(images, image_size)` would: images of different sizes (a device-resize
        source of mixed sizes) fitted to the target by the worker. None where they cannot be (an
        image came through a pipe, sizes differ and no target is given, they are a large share of
        the rings, or /dev/shm has no room): the caller stacks them itself."""
        if not images or not self.rings or not all(
                isinstance(im, RingView) and im.where is not None and im.dtype == np.uint8
                and im.ndim == 3 and im.shape[2] == 3 and im.flags.c_contiguous for im in images):
            return None
        mixed = any(im.shape != images[0].shape for im in images)
        if mixed and image_size is None:
            return None
        shape = (int(image_size), int(image_size), 3) if mixed else images[0].shape
        if len(images) * math.prod(shape) > sum(r.size for r in self.rings) // GATHER_RING_SHARE:
            return None  # the rings would hold a packed batch's images as well as those in flight
        out = self.buffers.array((len(images), *shape), np.uint8)
        if out is None:
            return None
        self.gathers += 1
        ticket = -self.gathers
        self.owner[ticket] = w = self._least_loaded()  # urgent: it starts after that worker's record
        self.about[ticket] = f"stacking a batch's {len(images)} images"
        parts = [(im.where[0], im.where[1], im.nbytes, im.shape) for im in images]
        try:
            self.urgent[w].send((ticket, GATHER, (self.buffers.name_of(out), parts, shape[0] if mixed else None)))
        except OSError:
            self._lost(w, ticket, "its urgent tasks' pipe")
        self.gathering[ticket] = gathering = Gathering(self, ticket, images, out)
        return gathering

    def materialise(self, images: list) -> list:
        """Images of a batch with lazy ones decoded by the workers (in order)."""
        tickets = [self.submit(0, (im,), "an image") if callable(im) else None for im in images]
        return [im if t is None else self.result(t) for im, t in zip(images, tickets)]

    def _drain(self, w: int, waiting_for: int) -> None:
        """Take worker w's next answer, or find it dead (after POLL_S without one, or at the end of
        its pipe: it died, perhaps half-way through an answer)."""
        try:
            if not self.outboxes[w].poll(POLL_S):
                self._check_alive(w, waiting_for)
                return
        except (EOFError, OSError):
            self._lost(w, waiting_for, "its answers' pipe")
        self._receive(w, waiting_for)

    def _receive(self, w: int, waiting_for: int) -> None:
        """Read worker w's next answer (it has one): its tasks' pipe has room for more."""
        try:
            ticket, status, value = self.outboxes[w].recv()
        except (EOFError, OSError):
            self._lost(w, waiting_for, "its answers' pipe")
        value = self._take(w, value)  # frees its stretch of the ring even if nobody wants it
        if ticket >= 0:  # the worker has read this task and those sent before it
            unread = self.unread[w]
            while unread and unread[0][0] <= ticket:
                unread.popleft()
            self._send(w)
        if ticket in self.cancelled:
            self.cancelled.discard(ticket)
        else:
            self.done[ticket] = (status, value)
        gathering = self.gathering.pop(ticket, None)
        if gathering is not None and status == "ok":  # copied: its stretches of the rings are free
            gathering.clear()

    def _lost(self, w: int, ticket: int, pipe: str) -> None:
        """A pipe to worker w broke: it died (say how), or, alive, closed it."""
        self.procs[w].join(timeout=5 * POLL_S)
        self._check_alive(w, ticket)
        self.close()
        raise DataWorkerError(f"data worker {w} closed {pipe} while alive; the step stops here and "
                              "resumes from its last checkpoint when run again") from None

    def _check_alive(self, w: int, ticket: int) -> None:
        proc = self.procs[w]
        if proc.is_alive():
            return
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        held = self.about.get(ticket, "")
        self.close()
        raise DataWorkerError(f"data worker {w} (pid {proc.pid}) died ({how})"
                              f"{' while reading ' + held if held else ''}; the step stops here and "
                              "resumes from its last checkpoint when run again")

    def close(self) -> None:
        """Stop the workers; answers never asked for have their shared-memory blocks freed."""
        self.stop.value = 1  # a worker sees it within URGENT_POLL_S, or in a wait for ring room
        deadline = time.monotonic() + 5.0
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            self._discard_answers()  # a worker exits only once its answers left the pipe
            time.sleep(0.01)
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=2.0)
        self._discard_answers()
        for box in self.inboxes:
            box.close()
        for box in self.outboxes:
            box.close()
        for ring in self.rings:
            ring.close()
            ring.unlink()
        for conn in self.urgent:
            conn.close()
        self.buffers.close()
        self.procs, self.rings, self.urgent = [], [], []

    def _discard_answers(self) -> None:
        """Take every answer still in the pipes (a worker blocked on a full ring, or on a full pipe,
        exits only once they are read); nobody will ask for them."""
        self.done.clear()
        self.gathering.clear()
        for tasks in (*self.unread, *self.backlog):
            tasks.clear()
        for w, box in enumerate(self.outboxes):
            try:
                while box.poll(0):
                    self._take(w, box.recv()[2])
            except (OSError, ValueError, EOFError):  # a dead worker's pipe, or one already closed
                pass


GATHER = 1  # the job key of `_gather`
# A batch whose images take more than this share of the rings is stacked by the training process:
# held one batch longer while a worker copies them, they would leave the rings too little room
# for the records in flight (measured: 100% image tokens of 384 px, 33 MB a batch in two 32 MB
# rings, was 15% slower gathered).
GATHER_RING_SHARE = 4


class Gathering(list):
    """A batch's images (ring views) being stacked by a worker into `out`; `result()` waits for
    it. The views are let go (their stretches of the rings freed) as soon as the worker's answer is
    read, whoever waits for what: a batch packed ahead must not keep a ring full."""

    def __init__(self, pool: WorkerPool, ticket: int, images: list, out: np.ndarray) -> None:
        super().__init__(images)
        self.pool, self.ticket, self.out = pool, ticket, out

    def result(self) -> np.ndarray:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            if not pool.procs and self.ticket not in pool.done:
                raise DataWorkerError("the data workers were stopped before this batch's images were "
                                      "stacked; the step resumes from its last checkpoint when run again")
            pool.result(self.ticket)
            self.clear()
        return self.out

    def discard(self) -> None:
        """Wait for the worker to be done writing `out` (it may be reused), if the pool still runs."""
        if self.pool is not None and self.pool.procs:
            try:
                self.result()
            except DataWorkerError:
                pass
        self.pool = None
        self.clear()


MAX_BATCH_BUFFERS = 8  # batches alive at once with their images in shared blocks (~7 MB each at 79m)


class _BatchBuffers:
    """Shared blocks that gathered batches' images live in, reused once a batch is gone (a weakref
    finalizer on its array): pages a worker and this process both touch once, not per batch. A
    new block is made only while /dev/shm keeps twice its size free (writing past a full tmpfs is
    SIGBUS); else the caller stacks in this process."""

    def __init__(self) -> None:
        self.free: list[_Ring] = []
        self.blocks: list[_Ring] = []
        self.names: dict[int, str] = {}  # id(array) → its block's name, while the array lives

    def array(self, shape: tuple, dtype: np.dtype) -> np.ndarray | None:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        fits = [b for b in self.free if b.size >= nbytes]
        if fits:
            block = min(fits, key=lambda b: b.size)
            self.free.remove(block)
        elif len(self.blocks) >= MAX_BATCH_BUFFERS:  # batches kept by the caller: stacked there
            return None
        else:
            size = -(-nbytes * 5 // 4 // (1 << 20)) << 20  # room for a batch a little larger
            try:
                st = os.statvfs("/dev/shm")
                if st.f_bavail * st.f_frsize < 2 * size:
                    return None
                block = _Ring(create=True, size=size)
            except OSError:
                return None
            self.blocks.append(block)
        out = _view(block, shape, dtype, 0)
        self.names[id(out)] = block.name
        weakref.finalize(out, self._release, id(out), block)
        return out

    def name_of(self, out: np.ndarray) -> str:
        return self.names[id(out)]

    def _release(self, key: int, block: "_Ring") -> None:
        self.names.pop(key, None)
        if block in self.blocks:  # not after close
            self.free.append(block)

    def close(self) -> None:
        for block in self.blocks:
            block.close()
            try:
                block.unlink()
            except FileNotFoundError:
                pass
        self.blocks, self.free = [], []


CHUNK = 8  # records per task: one round trip per 8 records (a short document is ~50 µs of work)


class Prefetch:
    """One source's records in flight, oldest first, sent to the workers CHUNK at a time.
    `ahead` records per worker keep every worker busy while the training process is away (a step);
    more would only hold memory and, at a start or resume, parse records dropped or needed much
    later. Each record keeps what its source needs to consume it (shard, index, epoch, position)."""

    def __init__(self, pool: WorkerPool, key: int, per_worker: int) -> None:
        self.pool, self.key = pool, key
        self.ahead = per_worker * pool.size
        self.chunks: deque = deque()  # (ticket or None, [meta]); meta = (error or None, path, idx, epoch, after)
        self.ready: deque = deque()  # (outcome, path, idx, epoch, after) of a chunk already back
        self.in_flight = 0

    def fill(self, read: Callable[[], tuple]) -> None:
        """Read and send records until `ahead` are in flight."""
        while self.in_flight < self.ahead:
            metas, args = [], []
            for _ in range(CHUNK):
                rec, path, idx, epoch, after = read()
                bad = rec if isinstance(rec, BadRecordError) else None
                metas.append((bad, path, idx, epoch, after))
                args.append((None if bad else rec, path, idx))
            about = f"{metas[0][1]}: records {metas[0][2]}–{metas[-1][2]}"
            self.chunks.append((self.pool.submit(self.key, (args,), about), metas))
            self.in_flight += len(metas)

    def next(self) -> tuple:
        """(sample or BadRecordError, path, idx, epoch, cursor after) of the oldest record."""
        if not self.ready:
            ticket, metas = self.chunks.popleft()
            for (bad, *where), out in zip(metas, self.pool.result(ticket)):
                self.ready.append((bad or _outcome(out), *where))
        self.in_flight -= 1
        return self.ready.popleft()

    def map_records(self, records: list[tuple]) -> list[tuple[str, Any]]:
        """("ok", sample) or ("bad", BadRecordError) of each (rec, path, idx), in order."""
        tickets = [self.pool.submit(self.key, (records[i:i + CHUNK],), f"{records[i][1]}: record {records[i][2]}")
                   for i in range(0, len(records), CHUNK)]
        # Copied out of the ring: a fine-tune keeps a megabatch's samples (~128 images) while it
        # serves them, which would keep the worker's ring full; a stream's samples live a batch.
        outs = [_outcome(_owned(o)) for t in tickets for o in self.pool.result(t)]
        return [("bad", o) if isinstance(o, BadRecordError) else ("ok", o) for o in outs]

    def clear(self) -> None:
        self.pool.cancel(t for t, _ in self.chunks)
        self.chunks.clear()
        self.ready.clear()
        self.in_flight = 0


def _owned(value: Any) -> Any:
    """`value` with its large arrays (views of a worker's ring) copied."""
    found: list = []
    value = _arrays(value, found)
    return _restore(value, [np.array(a) for a in found]) if found else value


def _outcome(out: tuple) -> Any:
    return BadRecordError(*out[1]) if out[0] == "bad" else out[1]


# -- what the workers run for a stream ---------------------------------------------------------

# Records in flight per worker and source: a 79m image-stage batch holds ~400 images and ~300
# documents; 32 per worker keeps 8 workers ~2/3 of a batch ahead (~40 MB of 224 px images).
PREFETCH_PER_WORKER = {"text": 32, "pairs": 32, "instructions": 32}


def tokenise(tok: Any, role: str, sample: Any) -> Any:
    """A parsed sample with its text as token ids (what `models.data.packing` accepts either way)."""
    if role == "text":  # bounded pieces, kept as int32: a huge document costs ~4 bytes a token
        return np.fromiter(itertools.chain.from_iterable(encode_chunks(tok, sample)), dtype=np.int32)
    image, text = sample
    if role == "pairs":
        return image, tok.encode(text)
    return image, [(tok.encode(q), tok.encode(a)) for q, a in text]


class ParseJob:
    """A worker's task for one source: parse records (decoding images) and tokenise their text;
    each record's outcome ("ok", sample) or ("bad", (shard, index, reason)), None for a record
    the reader already found bad (the training process holds its error)."""

    def __init__(self, parse: Callable, tok: Any, role: str) -> None:
        self.parse, self.tok, self.role = parse, tok, role

    def __call__(self, records: list[tuple]) -> list[tuple | None]:
        out: list[tuple | None] = []
        for rec, shard, idx in records:
            if _between is not None:
                _between()
            if rec is None:
                out.append(None)
                continue
            try:
                rec = read_members(rec, shard, idx, images=False)  # images: read where decoded
                out.append(("ok", tokenise(self.tok, self.role, self.parse(rec, shard, idx))))
            except BadRecordError as err:
                out.append(("bad", (err.shard, err.index, err.reason)))
        return out


def start_workers(stream: Any, workers: int) -> WorkerPool | None:
    """Hand the file sources of `stream` (`stream.worker_parts()`) to a pool of `workers`
    processes; None (nothing changes) with no workers, no file source (the built-in world renders
    in the training process), or in a daemonic process (which may not start any)."""
    parts = stream.worker_parts() if workers > 0 else []
    if not parts or mp.current_process().daemon:  # a daemonic process may not start processes
        return None
    jobs = [ParseJob(source.parse, stream.tok, role) for role, source in parts]
    pool = WorkerPool(workers, jobs)
    for (role, source), job in zip(parts, jobs):
        source.attach(Prefetch(pool, pool.job_key(job), PREFETCH_PER_WORKER[role]))
    stream.pool = pool
    return pool
