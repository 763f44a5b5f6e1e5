"""Resumable sample streams over a `DataSource`, one per role: text, image-caption pairs, and
instruction conversations. The world gives random access; shards are read in a per-epoch seeded
shard order, records in file order, and a stream's state is (epoch, shard, record) — small,
JSON-able, and exact on resume. Bad records raise, or are counted and skipped on request.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable

import numpy as np

from models.data import files
from models.data import readers as rd
from models.data.errors import BadRecordError, DataError, EmptySourceError, check_on_bad_record
from models.data.types import LazyImage
from models.data.world import WorldData
from models.data.world.entities import world_identity

ROLES = ("text", "pairs", "instructions")
KINDS_BY_ROLE = {"text": ("world", "jsonl", "parquet", "tokens"),
                 "pairs": ("world", "webdataset", "parquet_images"),
                 "instructions": ("world", "llava")}
Turns = list[tuple[str, str]]


def resolve_paths(source) -> list[str]:
    """The source's shard files: brace lists and globs expanded, sorted; a clear error naming the
    pattern when it matches nothing or names missing files (`models.data.files.resolve`)."""
    if not source.paths:
        raise DataError(f"data source {source.name!r} ({source.kind}) names no paths")
    return files.resolve(source.name, source.paths, files.storage_of(source))


def world_data(source) -> WorldData:
    return WorldData.from_seed(*world_identity(source))


class WorldSource:
    """Sample i of a world stream; the state is just i."""

    def __init__(self, fn: Callable[[int], Any], lazy_fn: Callable[[int], Any] | None = None) -> None:
        self.fn, self.lazy_fn, self.index, self.skipped = fn, lazy_fn, 0, 0

    def make_lazy(self) -> None:
        """Render images only when asked (a world sample is never bad: nothing else changes)."""
        self.fn = self.lazy_fn or self.fn

    def next(self) -> tuple[Any, dict]:
        before = {"index": self.index}
        self.index += 1
        return self.fn(before["index"]), before

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])


class ShardSource:
    """Records of sharded files, parsed into samples, forever (epoch after epoch).

    Reading (the cursor: epoch, shard, record) and consuming are apart so that a worker pool
    (`attach`) can parse records ahead of the stream: each record read is queued with the cursor's
    state after it, and `state_dict` is always that of the last record *consumed*. Bad records are
    counted, and an epoch without a good record detected, when consumed, so both are the same with
    and without workers.
    """

    def __init__(self, paths: list[str], iter_shard: Callable, parse: Callable, *, seed: int,
                 on_bad_record: str = "error", shuffle_shards: bool = True,
                 lazy_parse: Callable | None = None, iter_refs: Callable | None = None) -> None:
        self.paths, self.iter_shard, self.parse, self.lazy_parse = paths, iter_shard, parse, lazy_parse
        # The same records with their large members left unread (`readers.Member`), for a worker pool
        # to read: they never pass through the training process. Shards opened after `attach` use it.
        self.iter_refs = iter_refs
        self.seed, self.shuffle = seed, shuffle_shards
        self.on_bad = check_on_bad_record(on_bad_record)
        self.epoch = self.shard = self.record = self.skipped = 0
        self.resume: int | None = None  # where record `record` starts in the shard, if the reader says
        self._it = None
        self._consumed: dict = self._cursor()
        self._good_in_epoch, self._epoch_seen = 0, 0
        self.prefetch = None  # models.data.workers.Prefetch once a pool is attached
        self.parallel = True  # whether parsing is worth a data worker (token arrays are not)
        self._order_of: tuple[int | None, np.ndarray] = (None, np.arange(0))

    def make_lazy(self) -> None:
        """Decode images only when asked, where that cannot change the stream: with on_bad_record
        = "skip" an undecodable image is skipped, which every rank must see, so they all decode."""
        if self.on_bad == "error" and self.lazy_parse is not None:
            self.parse = self.lazy_parse

    def attach(self, prefetch) -> None:
        """Parse records ahead in a worker pool from now on (`prefetch` holds the pool and key)."""
        self.prefetch = prefetch

    def _order(self) -> np.ndarray:
        # Asked for every record read: made once per epoch (a seeded permutation costs ~0.2 ms).
        if self._order_of[0] != self.epoch:
            order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))
                     if self.shuffle else np.arange(len(self.paths)))
            self._order_of = (self.epoch, order)
        return self._order_of[1]

    def _path(self) -> str:
        return self.paths[int(self._order()[self.shard])]

    def _cursor(self) -> dict:
        state = {"epoch": self.epoch, "shard": self.shard, "record": self.record}
        return state if self.resume is None else state | {"resume": self.resume}

    def _open(self) -> None:
        # Resumed mid-shard: the reader skips the records this shard already gave, undecoded.
        seek = {} if self.resume is None else {"resume": self.resume}
        reader = self.iter_refs if self.prefetch is not None and self.iter_refs else self.iter_shard
        self._it, self._seen = reader(self._path(), start=self.record, **seek), 0

    def _read(self) -> tuple[Any, str, int, int, dict]:
        """The next record: (record dict or BadRecordError, shard path, index, epoch, cursor after)."""
        while True:
            if self._it is None:
                self._open()
            item = next(self._it, None)
            if item is None:
                path, epoch, empty = self._path(), self.epoch, self._seen == 0 and self.record == 0
                self._it, self.record, self.shard, self.resume = None, 0, self.shard + 1, None
                if self.shard == len(self.paths):
                    self.epoch, self.shard = self.epoch + 1, 0
                if empty:
                    return BadRecordError(path, -1, "empty shard: no records"), path, -1, epoch, self._cursor()
                continue
            self._seen += 1
            idx, rec = item
            self.record = idx + 1
            self.resume = rec.pop(rd.RESUME, None) if isinstance(rec, dict) else None
            return rec, self._path(), idx, self.epoch, self._cursor()

    def _consume(self, outcome: Any, path: str, idx: int, epoch: int, after: dict) -> tuple[Any, dict] | None:
        """Account for one record read: its sample and position, or None (skipped)."""
        if epoch != self._epoch_seen:
            if self._good_in_epoch == 0:
                raise EmptySourceError(f"no readable record in {len(self.paths)} shard(s): "
                                       f"{', '.join(self.paths[:3])}{' …' if len(self.paths) > 3 else ''}")
            self._epoch_seen, self._good_in_epoch = epoch, 0
        self._consumed = after
        if isinstance(outcome, BadRecordError):
            if self.on_bad == "error":
                raise outcome
            self.skipped += 1
            return None
        self._good_in_epoch += 1
        return outcome, {"epoch": epoch, "shard": after["shard"], "record": idx}

    def _parse_here(self, rec: Any, path: str, idx: int) -> Any:
        if isinstance(rec, BadRecordError):
            return rec
        try:
            return self.parse(rec, path, idx)
        except BadRecordError as err:
            return err

    def next(self) -> tuple[Any, dict]:
        while True:
            if self.prefetch is None:
                rec, path, idx, epoch, after = self._read()
                got = self._consume(self._parse_here(rec, path, idx), path, idx, epoch, after)
            else:
                got = self._next_prefetched()
            if got is not None:
                return got

    def _next_prefetched(self) -> tuple[Any, dict] | None:
        self.prefetch.fill(self._read)
        return self._consume(*self.prefetch.next())

    def state_dict(self) -> dict:
        return dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        if self.prefetch is not None:
            self.prefetch.clear()  # read ahead of a position no longer current
        self.epoch, self.shard, self.record = (int(state[k]) for k in ("epoch", "shard", "record"))
        self.resume = int(state["resume"]) if state.get("resume") is not None else None
        self._it, self._consumed = None, self._cursor()
        self._epoch_seen, self._good_in_epoch = self.epoch, 1  # resumed mid-epoch: records were read before


# --- parsers: record → sample -----------------------------------------------------------------

def parse_text(rec: dict, shard: str, idx: int, *, key: str = "text") -> str:
    return rd.field(rec, key, shard, idx)


def _image(data: bytes, image_size: int, shard: str, idx: int, lazy: bool) -> np.ndarray | LazyImage:
    if lazy:
        return LazyImage(rd.decode_image, data, image_size, shard, idx)
    return rd.decode_image(data, image_size, shard, idx)


def parse_wds(rec: dict, shard: str, idx: int, *, image_size: int, lazy: bool = False,
              image_ext: str | None = None, caption_field: str | None = None
              ) -> tuple[np.ndarray | LazyImage, str]:
    """A WebDataset sample: the image member `image_ext` names (`jpg`, or alternatives `jpg;png`;
    default: the first image member), and the caption from `.txt`, or from field `caption_field` of
    `.json` (img2dataset writes KEY.json beside KEY.txt; some shards hold only the JSON). With
    `caption_field` set, the JSON's field is the caption."""
    key = rec.get("__key__")
    if image_ext:
        img_key = next((e for e in image_ext.lower().split(";") if e in rec), None)
        if img_key is None:
            raise BadRecordError(shard, idx, f"sample {key!r} has no .{image_ext} image (image_ext)")
    else:
        img_key = rd.first_image_key(rec)
        if img_key is None:
            raise BadRecordError(shard, idx, f"sample {key!r} has no image file")
    return _image(rec[img_key], image_size, shard, idx, lazy), _wds_caption(rec, shard, idx, caption_field)


def _wds_caption(rec: dict, shard: str, idx: int, caption_field: str | None) -> str:
    key = rec.get("__key__")
    if caption_field is None and "txt" in rec:
        try:
            return rec["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadRecordError(shard, idx, "caption .txt is not UTF-8") from None
    if "json" not in rec:
        what = f".json with field {caption_field!r}" if caption_field else ".txt or .json caption"
        raise BadRecordError(shard, idx, f"sample {key!r} has no {what}")
    try:
        meta = json.loads(rec["json"])
    except ValueError as exc:
        raise BadRecordError(shard, idx, f"sample {key!r}: .json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise BadRecordError(shard, idx, f"sample {key!r}: .json is not an object")
    return rd.field(meta, caption_field or "caption", shard, idx).strip()


def parse_parquet_image(rec: dict, shard: str, idx: int, *, image_size: int, image_key: str = "image",
                        caption_key: str = "caption", lazy: bool = False) -> tuple[np.ndarray | LazyImage, str]:
    data = rd.field(rec, image_key, shard, idx, (bytes, dict))
    if isinstance(data, dict):  # Hugging Face datasets store {"bytes": …, "path": …}
        data = rd.field(data, "bytes", shard, idx, (bytes,))
    caption = rd.field(rec, caption_key, shard, idx)
    return _image(data, image_size, shard, idx, lazy), caption


def _read_image(path: str, image_size: int, shard: str, idx: int, storage: files.Storage = ()) -> np.ndarray:
    try:
        data = files.read_bytes(path, storage)
    except OSError as exc:
        raise BadRecordError(shard, idx, f"image {str(path)!r} unreadable ({exc.strerror or exc})") from None
    return rd.decode_image(data, image_size, shard, idx)


def llava_fields(rec: dict, shard: str, idx: int) -> tuple[str | None, Turns]:
    """A LLaVA record's image path (None: a text-only conversation, as ~40k of LLaVA-1.5's mix are)
    and its human/gpt turns, every turn kept; BadRecordError naming the field otherwise."""
    rel = rd.field(rec, "image", shard, idx) if rec.get("image") is not None else None
    convs = rd.field(rec, "conversations", shard, idx, (list,))
    turns: Turns = []
    for j in range(0, len(convs) - 1, 2):
        q, a = convs[j], convs[j + 1]
        if not (isinstance(q, dict) and isinstance(a, dict) and q.get("from") == "human"
                and a.get("from") == "gpt" and isinstance(q.get("value"), str)
                and isinstance(a.get("value"), str)):
            raise BadRecordError(shard, idx, f"field 'conversations': [{j}:{j + 2}] is not a "
                                             "human/gpt pair of {from, value}")
        turns.append((q["value"].replace("<image>", "").strip(), a["value"].strip()))
    if not turns:
        raise BadRecordError(shard, idx, "field 'conversations' holds no human/gpt turn")
    return rel, turns


def llava_image_path(rel: str, shard: str, idx: int, image_root: str | None,
                     allow_outside_root: bool = False) -> str:
    """Where a record's image is: under the source's `image_root`, else beside the JSON file, and
    confined there unless the study sets `allow_outside_root`."""
    root = image_root or files.parent(shard)
    return files.image_file(rel, shard, idx, base=root, root=root, allow_outside=allow_outside_root)


def parse_llava(rec: dict, shard: str, idx: int, *, image_size: int, lazy: bool = False,
                image_root: str | None = None, allow_outside_root: bool = False,
                storage: files.Storage = ()) -> tuple[np.ndarray | LazyImage | None, Turns]:
    """(image or None for a text-only conversation, turns)."""
    rel, turns = llava_fields(rec, shard, idx)
    if rel is None:
        return None, turns
    path = llava_image_path(rel, shard, idx, image_root, allow_outside_root)
    if lazy:
        return LazyImage(_read_image, path, image_size, shard, idx, storage), turns
    return _read_image(path, image_size, shard, idx, storage), turns


def llava_parser(source, image_size: int) -> Callable:
    """parse_llava bound to the source's image root and store."""
    return partial(parse_llava, image_size=image_size, image_root=source.option("image_root"),
                   allow_outside_root=bool(source.option("allow_outside_root", False)),
                   storage=files.storage_of(source))


def decodes_file(image: Any) -> bool:
    """Whether `image` is a file's image left undecoded (which a data worker can decode)."""
    return isinstance(image, LazyImage) and image.fn in (rd.decode_image, _read_image)


def image_size_for(source, image_size: int) -> int:
    """The size images of `source` are decoded to: `image_size`, or with `resize = "device"` a
    `DeviceResize` (decoded at least that large, resized once on the model's device)."""
    return rd.DeviceResize(image_size) if source.option("resize", "cpu") == "device" else image_size


def _reader(source, image_size: int) -> tuple[Callable, Callable]:
    """(iterate a shard, parse a record) for a shard-backed source kind."""
    image_size = image_size_for(source, image_size)
    text = partial(parse_text, key=source.option("text_field", "text"))
    store = files.storage_of(source)
    jsonl, parquet = partial(rd.iter_jsonl, storage=store), partial(rd.iter_parquet, storage=store)
    readers = {"jsonl": (jsonl, text), "parquet": (parquet, text),
               "webdataset": (partial(rd.iter_webdataset, storage=store), partial(
                   parse_wds, image_size=image_size, image_ext=source.option("image_ext"),
                   caption_field=source.option("caption_field"))),
               "parquet_images": (parquet, partial(
                   parse_parquet_image, image_size=image_size,
                   image_key=source.option("image_field", "image"),
                   caption_key=source.option("caption_field", "caption"))),
               "llava": (partial(rd.iter_llava, storage=store), llava_parser(source, image_size))}
    return readers[source.kind]


def _check_role(source, role: str) -> None:
    if source.kind not in KINDS_BY_ROLE[role]:
        raise DataError(f"data source {source.name!r}: kind {source.kind!r} cannot serve as "
                        f"{role}; use one of {KINDS_BY_ROLE[role]}")


def open_source(source, role: str, *, image_size: int = 32, seed: int = 0,
                on_bad_record: str = "error"):
    """A resumable sample stream for `role` of `source`."""
    _check_role(source, role)
    if source.kind == "world":
        wd = world_data(source)
        if role == "text":
            return WorldSource(wd.text)
        fn = wd.pair if role == "pairs" else wd.instruction
        return WorldSource(partial(fn, image_size=image_size), partial(fn, image_size=image_size, lazy=True))
    if source.kind == "tokens":  # pre-tokenised: reading a memory-mapped array is all there is
        from models.data import tokens as tk

        shuffle = tk.origin_source(source).option("shuffle_shards", True)
        src = ShardSource(tk.token_shards(source), tk.iter_tokens, tk.parse_tokens, seed=seed,
                          on_bad_record=on_bad_record, shuffle_shards=bool(shuffle))
        src.parallel = False
        return src
    it, parse = _reader(source, image_size)
    lazy = partial(parse, lazy=True) if role != "text" else None
    refs = partial(it, refs=True) if source.kind == "webdataset" else None
    return ShardSource(resolve_paths(source), it, parse, seed=seed, on_bad_record=on_bad_record,
                       shuffle_shards=bool(source.option("shuffle_shards", True)), lazy_parse=lazy,
                       iter_refs=refs)


def check_first_records(source, role: str, path: str, *, records: int = 2, image_size: int = 32) -> None:
    """Read and parse the first `records` records of one shard of `source` (images decoded): the
    BadRecordError a step would meet there (invalid JSON, a cut-off tar, an empty shard), raised
    before anything trains. The world and a shard that reads are silent."""
    _check_role(source, role)
    if source.kind == "world":
        return
    it, parse = _reader(source, image_size)
    seen = 0
    for index, rec in it(path):
        if isinstance(rec, BadRecordError):
            raise rec
        if isinstance(rec, dict):
            rec.pop(rd.RESUME, None)
        parse(rec, path, index)
        seen += 1
        if seen >= records:
            return
    if seen == 0:
        raise BadRecordError(path, -1, "empty shard: no records")
