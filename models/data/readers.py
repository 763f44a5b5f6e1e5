"""Real-format shard readers: each yields a shard's records in file order as (index, record) or
(index, BadRecordError), and stops after an error it cannot read past (a truncated file).

`start` (a resumed stream's position) skips the records before it without decoding them: JSONL
lines are counted, not parsed; Parquet row groups before it are not read; a plain tar seeks to the
byte offset its records carry (`RESUME`) when the stream kept it, else is read through. Indices
are those of a full read.

Formats: JSONL (optionally zstd), Parquet, WebDataset tar (an image and a `.txt` per key), and a
LLaVA JSON list. Files are local or remote: `storage` is the source's connection settings and
`models.data.files.open_binary` opens them (a remote plain tar's seek is a ranged read). A plain
tar's headers are walked here without `tarfile` where they are plain ustar (`_plain_members`), and
with `refs` its members are left unread (`Member`) for a data worker to read.
Decoding a record into a sample (image bytes → array) is `decode_image`'s job.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from models.data import files
from models.data.errors import BadRecordError, DataError

Item = tuple[int, Any]  # (record index, record dict or BadRecordError)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def iter_jsonl(path: str, start: int = 0, *, storage: files.Storage = ()) -> Iterator[Item]:
    """Lines of a `.jsonl` or `.jsonl.zst` file as dicts; blank lines are not records."""
    index = 0
    try:
        for line in _lines(path, storage=storage):
            if not line.strip():
                continue
            if index < start:
                index += 1
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
                yield index, rec
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
                yield index, BadRecordError(path, index, f"not valid JSON: {exc}")
            index += 1
    except GeneratorExit:  # closed early; at interpreter exit the names below may be gone already
        raise
    except DataError:  # the source cannot be opened at all (a missing extra): not a bad record
        raise
    except Exception as exc:  # truncated or corrupt compression (zstandard has its own error type)
        if index >= start:
            yield index, BadRecordError(path, index, f"unreadable from here on ({type(exc).__name__}: {exc})")


def _lines(path: str, chunk: int = 1 << 16, *, storage: files.Storage = ()) -> Iterator[str]:
    """Text lines; zstd is decoded frame by frame so that a truncated frame is an error, not EOF."""
    if not str(path).endswith(".zst"):
        with io.TextIOWrapper(files.open_binary(path, storage), encoding="utf-8") as f:
            yield from f
        return
    import zstandard
    dobj, complete = zstandard.ZstdDecompressor().decompressobj(), True
    pending: list[bytes] = []  # the current line's pieces: joined once, so a long line is linear
    with files.open_binary(path, storage) as f:
        while raw := f.read(chunk):
            while raw:
                data = dobj.decompress(raw)
                raw = dobj.unused_data if dobj.eof else b""
                complete = dobj.eof
                if dobj.eof:  # concatenated frames: start the next one
                    dobj = zstandard.ZstdDecompressor().decompressobj()
                if b"\n" not in data:
                    pending.append(data)
                    continue
                *lines, tail = data.split(b"\n")
                lines[0] = b"".join([*pending, lines[0]])
                pending = [tail]
                for line in lines:
                    yield line.decode("utf-8") + "\n"
    if not complete:
        raise EOFError("zstd frame is truncated")
    if any(pending):
        yield b"".join(pending).decode("utf-8")


def iter_parquet(path: str, columns: list[str] | None = None, start: int = 0, *,
                 storage: files.Storage = ()) -> Iterator[Item]:
    """Rows of a Parquet file as dicts, one row group at a time."""
    import pyarrow.parquet as pq
    index = 0
    try:
        pf = pq.ParquetFile(files.open_binary(path, storage) if files.is_remote(path) else path)
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if index + rows <= start:
                index += rows
                continue
            table = pf.read_row_group(g, columns=columns)
            skip = max(0, start - index)
            index += skip
            for row in table.slice(skip).to_pylist():
                yield index, row
                index += 1
    except GeneratorExit:  # closed early; at interpreter exit the names below may be gone already
        raise
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        if index >= start:
            yield index, BadRecordError(path, index, f"unreadable Parquet ({type(exc).__name__}: {exc})")


RESUME = "__resume__"  # a record's key for where the next record starts (readers that can seek)


class Member(NamedTuple):
    """A member of a plain local tar left unread: where its bytes are (`read_members` and
    `decode_image` read them)."""
    path: str
    offset: int
    size: int


def iter_webdataset(path: str, start: int = 0, resume: int | None = None, *,
                    storage: files.Storage = (), refs: bool = False) -> Iterator[Item]:
    """WebDataset samples: tar members grouped by key (name up to the first dot), in order.

    Python's tarfile stops quietly at a truncated member and at a header it cannot read, so sizes
    and the end-of-archive marker are checked here: a cut-off or corrupt shard is an error (on the
    record being read, which may have lost members), never a silently shorter one. Each sample of a
    plain tar carries `RESUME`, the byte offset of the next sample's first header: given back with
    `start` (that sample's index), the read seeks there instead of reading through the shard.
    With `refs`, a plain local tar's members are `Member`s, not bytes: only headers are read here,
    and a data worker reads the bytes (`read_members`), so they never pass through this process.
    """
    plain = str(path).endswith(".tar")  # compressed tars detect truncation themselves
    by_ref = refs and plain and not files.is_remote(path)
    seek = plain and resume is not None
    index, key, sample, end = (start if seek else 0), None, {}, 0
    try:
        size = files.size(path, storage) if plain else float("inf")
        with files.open_binary(path, storage) as f:
            at = end = resume if seek else 0
            members = _plain_members(f, at) if plain else _tarfile_members(f, at, "r:*", with_data=True)
            for name, offset, offset_data, msize, isfile, data in members:
                end = offset_data + -(-msize // 512) * 512
                if not isfile:
                    continue
                folder, _, base = name.rpartition("/")
                stem, _, ext = base.partition(".")
                k = f"{folder}/{stem}" if folder else stem
                if k != key and sample:
                    if plain:
                        sample[RESUME] = offset
                    if index >= start:
                        yield index, sample
                    index += 1
                    sample = {}
                key = k
                # Without a resume offset, members before `start` are read too: sequential reads
                # beat hopping from header to header (2× slower cold: benchmarks/resume_seek.py).
                if by_ref:
                    data = Member(path, offset_data, msize)
                elif plain:
                    f.seek(offset_data)
                    data = f.read(msize)
                if (not by_ref and len(data) != msize) or end > size:
                    raise EOFError(f"member {name!r} is cut off")
                sample["__key__"], sample[ext.lower()] = k, data
            if plain:
                _check_end(f, end, size)
    except GeneratorExit:  # closed early; at interpreter exit the names below may be gone already
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        if index >= start:
            yield index, BadRecordError(path, index, f"truncated or corrupt tar ({type(exc).__name__}: {exc})")
        return
    if sample and index >= start:
        if plain:
            sample[RESUME] = end
        yield index, sample


def _check_end(f: Any, end: int, size: int) -> None:
    """What follows a plain tar's last member must be its end-of-archive block: a shard cut short
    has none, and a header the walk could not read (tarfile ends a walk quietly at a bad checksum,
    as if the archive ended there) is not one — the shard's remaining records would be lost unseen."""
    if end + 1024 > size:
        raise EOFError("no end-of-archive marker")
    f.seek(end)
    if f.read(512).strip(b"\0"):
        raise tarfile.ReadError(f"unreadable member header at byte {end}")


TarMember = tuple[str, int, int, int, bool, Any]  # name, header offset, data offset, size, is a file, data


def _plain_members(f: Any, at: int) -> Iterator[TarMember]:
    """A plain tar's members from byte `at`, headers parsed here (data None: the caller reads it).

    Reads what `tarfile` reads (one 512-byte header per member) at about a third of its cost (0.08
    → 0.024 ms a sample in the training process, profiled): only the name, size and type are
    decoded. The end-of-archive block, a short read or an unreadable size end the
    walk as they end tarfile's (the caller then finds the missing end marker); anything else this
    does not decode itself — a pax or GNU long-name header, a bad checksum, base-256 sizes, a V7
    header — hands the rest of the shard to `tarfile` from that header on."""
    header = _header_reader(f)
    while True:
        block = header(at)
        if len(block) < 512 or not block.strip(b"\0"):
            return
        kind, raw_size, raw_sum = block[156:157], block[124:136], block[148:156]
        try:
            size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
            checksum = int(raw_sum.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            size = checksum = -1
        if (block[257:262] != b"ustar" or kind not in _FAST_TYPES or size < 0
                or checksum != _byte_sum(block) - sum(raw_sum) + 256):
            yield from _tarfile_members(f, at, "r:")
            return
        name = block[0:100].split(b"\0", 1)[0]
        isfile = kind != b"5" and not (kind == b"\0" and name.endswith(b"/"))
        name = name if isfile else name.rstrip(b"/")  # as tarfile names a directory
        prefix = block[345:500].split(b"\0", 1)[0]
        name = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
        yield name, at, at + 512, size, isfile, None
        at += 512 + -(-size // 512) * 512


_FAST_TYPES = (b"0", b"\0", b"7", b"5")  # regular files and directories; the rest go to tarfile


def _header_reader(f: Any) -> Callable[[int], bytes]:
    """The 512 bytes at an offset of `f`: one `pread` for a local file (a buffered seek and read
    filled 8 KB of buffer for each header), a seek and a read otherwise (a remote file)."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = -1
    if fd >= 0 and isinstance(f, io.BufferedReader):
        return lambda at: os.pread(fd, 512, at)

    def seek_read(at: int) -> bytes:
        f.seek(at)
        return f.read(512)
    return seek_read


def _byte_sum(block: bytes) -> int:
    """The sum of a 512-byte header's bytes, at C speed (`sum` is ~1.7 µs, this ~0.4): Adler-32's
    low half is 1 + the sum of the bytes mod 65521, and 256 bytes sum to at most 65,280."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _tarfile_members(f: Any, at: int, mode: str, with_data: bool = False) -> Iterator[TarMember]:
    """The members from byte `at` through Python's tarfile (any header kind, compressed tars)."""
    f.seek(at)
    with tarfile.open(fileobj=f, mode=mode) as tar:
        for m in tar:
            data = tar.extractfile(m).read() if with_data and m.isfile() else None
            yield m.name, m.offset, m.offset_data, m.size, m.isfile(), data


class MemberReader:
    """Reads `Member`s, keeping the last shard open (a worker reads one shard's members in a row)."""

    def __init__(self) -> None:
        self.path, self.fd = None, -1

    def read(self, m: Member, shard: str, index: int, name: str) -> bytes:
        """The member's bytes; one the file no longer holds (cut after its header was read) is a
        BadRecordError naming the record and member."""
        try:
            if m.path != self.path:
                self.close()
                self.fd, self.path = os.open(m.path, os.O_RDONLY), m.path
            data = os.pread(self.fd, m.size, m.offset)
        except OSError as exc:
            raise BadRecordError(shard, index, f"member .{name} unreadable ({exc.strerror or exc})") from None
        if len(data) != m.size:
            raise BadRecordError(shard, index, f"truncated or corrupt tar (member .{name} is cut off)")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.path, self.fd = None, -1


_MEMBERS = MemberReader()  # this process's (each data worker's) reader


def read_members(rec: Any, shard: str, index: int, *, images: bool = True) -> Any:
    """`rec` with its `Member`s read. With `images=False` image members stay references, read by
    `decode_image` when (and where) the image is decoded: a rank's lazy image crosses to the
    training process and back to a worker as a reference, not as its bytes twice."""
    if not isinstance(rec, dict) or not any(isinstance(v, Member) for v in rec.values()):
        return rec
    return {name: _MEMBERS.read(v, shard, index, name)
            if isinstance(v, Member) and (images or "." + name not in IMAGE_EXTS) else v
            for name, v in rec.items()}


def iter_llava(path: str, start: int = 0, *, storage: files.Storage = ()) -> Iterator[Item]:
    """Elements of a LLaVA JSON list (`image`, `conversations` of {from, value})."""
    try:
        with files.open_binary(path, storage) as f:
            data = json.load(f)
    except DataError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        if start == 0:
            yield 0, BadRecordError(path, 0, f"not a readable JSON list ({type(exc).__name__}: {exc})")
        return
    if not isinstance(data, list):
        if start == 0:
            yield 0, BadRecordError(path, 0, "a LLaVA file must hold a JSON list of records")
        return
    for i, rec in enumerate(data[start:], start):
        yield i, rec if isinstance(rec, dict) else BadRecordError(path, i, "record is not an object")


class DeviceResize(int):
    """An image size whose one resize is left to the model's device (a source with `resize =
    "device"`): `decode_image` decodes to at least this size (JPEG draft) and stops there."""

    def __reduce__(self):
        return DeviceResize, (int(self),)


def decode_image(data: bytes | Member, image_size: int, shard: str, index: int) -> np.ndarray:
    """Image bytes (or a tar member holding them) → uint8 [S, S, 3], resized once with bicubic
    (SigLIP's processor filter) when the size differs.

    A JPEG at least twice the target on its short side is decoded at the smallest DCT scale (1/2,
    1/4, 1/8) that still covers the target (`Image.draft`): for a 224-pixel target a 1024-pixel JPEG
    decodes at 256, a 384-pixel one in full (192 would not cover 224). The resize then starts from
    fewer pixels; the result differs from a full decode by a little DCT-domain smoothing, bounded
    against Hugging Face's processor in `tests/test_input_pipeline.py`.
    Greyscale, palette and CMYK images are converted to RGB; RGB images are not touched. A JPEG
    that needs neither a draft nor a resize here goes to libjpeg-turbo directly (`_jpeg_direct`:
    the same pixels, a quarter less time). With a
    `DeviceResize` size the image stays at its decoded size (`models.vision.pixels` resizes it).
    """
    from PIL import Image
    if isinstance(data, Member):
        data = _MEMBERS.read(data, shard, index, "image")
    direct = _jpeg_direct(data, image_size)
    if direct is not None:
        return direct
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG" and _drafts(*im.size, image_size):
                im.draft("RGB", (image_size, image_size))  # keeps every side >= the target
            if im.mode != "RGB":
                im = im.convert("RGB")
            if im.size != (image_size, image_size) and not isinstance(image_size, DeviceResize):
                im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types for undecodable bytes
        raise BadRecordError(shard, index, f"undecodable image ({type(exc).__name__}: {exc})") from None


def _drafts(width: int, height: int, image_size: int) -> bool:
    """Whether a JPEG this size is decoded in draft mode (a reduced DCT scale) for `image_size`."""
    return min(width, height) >= 2 * image_size


try:  # libjpeg-turbo's decoder straight to packed RGB (a dependency; PIL decodes where it is missing)
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover — e.g. a device image without it
    _simplejpeg = None


def _jpeg_direct(data: bytes, image_size: int) -> np.ndarray | None:
    """A JPEG that needs no draft, no resize on the CPU and no CMYK conversion, decoded by
    libjpeg-turbo (simplejpeg) straight into packed RGB; None where PIL decodes it.

    The pixels are PIL's: Pillow decodes with the same libjpeg-turbo, and simplejpeg's defaults are
    Pillow's (accurate integer DCT, smooth chroma upsampling; greyscale replicated into R, G and B
    as `convert("RGB")` does) — `tests/test_input_pipeline.py` checks them equal bit for bit. What
    it saves is Pillow's RGBX → RGB repack (`tobytes`) and the image object: a 384-pixel JPEG in
    0.39 ms instead of 0.52 on the benchmark machine. Anything it refuses (strictly: any decoder
    warning) goes to PIL, which decides as before whether the image is bad."""
    if _simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
        if (colorspace not in ("YCbCr", "Gray") or _drafts(width, height, image_size)
                or ((width, height) != (image_size, image_size) and not isinstance(image_size, DeviceResize))):
            return None  # CMYK/YCCK, a draft decode, or a resize: PIL
        return _simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None


def stack_images(images: list[np.ndarray], image_size: int) -> np.ndarray:
    """Decoded images as one uint8 [N, H, W, 3] array: as they are when they share a shape (a
    device-resize source's images of one size), else each resized on the CPU to the target."""
    if all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return np.stack([fit_image(im, image_size) for im in images])


def fit_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """An image of a batch whose images differ in size, at the target size: as it is, or resized on
    the CPU with bicubic (`stack_images`; a data worker stacking the batch runs the same)."""
    size = (int(image_size), int(image_size))
    if image.shape[:2] == size[::-1]:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def field(rec: dict, name: str, shard: str, index: int, types=(str,)) -> Any:
    """`rec[name]`, or a BadRecordError naming the shard, record and missing field."""
    value = rec.get(name) if isinstance(rec, dict) else None
    if value is None or not isinstance(value, types):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise BadRecordError(shard, index, f"field {name!r} is {got}")
    return value


def first_image_key(sample: dict) -> str | None:
    return next((k for k in sample if "." + k.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
