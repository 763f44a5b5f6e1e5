"""Tokenizers: the built-in world's word-level tokenizer and a local Hugging Face `tokenizer.json`.

Both expose the same small surface the trainer and the streams use: `vocab_size`, `encode`,
`decode` and the special ids (pad, eos, image placeholder, user and assistant roles). A Hugging
Face tokenizer that lacks a special gets it appended after its own vocabulary.

`encode_chunks` encodes a document of any length in bounded pieces (a Hugging Face tokenizer
holds ~140 bytes per input byte while it encodes, so one 200 MB record would need ~28 GB).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from models.data.errors import DataError

SPECIALS = ("<pad>", "<eos>", "<image>", "<user>", "<assistant>", "<unk>")
# Characters encoded at once: a document longer than this is cut into pieces about this long, so
# encoding memory is bounded (~140 bytes per character for a Hugging Face tokenizer: ~37 MB).
CHUNK_CHARS = 1 << 18
_WORD_RE = re.compile(r"<[a-z]+>|[a-z0-9_]+|[^\sa-z0-9_]")
_CUT_RE = re.compile(r"\s(?=\S)")  # where encode_chunks may cut: before the space a word follows


class Tokenizer:
    """The shared interface; subclasses fill in `_encode`/`_decode` and the special ids."""

    vocab_size: int
    pad_id: int
    eos_id: int
    image_id: int
    user_id: int
    assistant_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    @property
    def role_ids(self) -> tuple[int, int]:
        return self.user_id, self.assistant_id


class WordTokenizer(Tokenizer):
    """One id per word of a closed vocabulary: specials first, then the words in order.

    Text is lower-cased and split into words and single punctuation marks; special tokens written
    as `<image>` etc. in the text map to their ids. Unknown words become `<unk>`.
    """

    def __init__(self, words: list[str]) -> None:
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise DataError("word tokenizer: duplicate words in the vocabulary")
        self.vocab_size = len(self.itos)
        self.pad_id, self.eos_id, self.image_id, self.user_id, self.assistant_id, self.unk_id = range(6)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = [self.stoi.get(w, self.unk_id) for w in _WORD_RE.findall(text.lower())]
            if len(self._cache) < 200_000:  # the world repeats short sentences a lot
                self._cache[text] = ids
        return list(ids)

    def decode(self, ids) -> str:
        return " ".join(self.itos[int(i)] for i in ids if 0 <= int(i) < self.vocab_size)

    def words(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    def hf_json(self) -> dict:
        """This tokenizer as a Hugging Face `tokenizer.json`: a WordLevel model over the same ids,
        lower-casing, then the same word pattern inside each whitespace-free piece. The specials
        stay plain vocabulary words (not added tokens), so decoding keeps them, as `decode` does."""
        split = {"type": "Split", "pattern": {"Regex": _WORD_RE.pattern}, "behavior": "Isolated",
                 "invert": False}
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                "normalizer": {"type": "Lowercase"},
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, split]},
                "post_processor": None, "decoder": None,
                "model": {"type": "WordLevel", "vocab": dict(self.stoi), "unk_token": SPECIALS[5]}}


class HFTokenizer(Tokenizer):
    """A local Hugging Face `tokenizer.json` (the optional `tokenizers` package)."""

    _ALIASES = {"pad": ("<pad>", "<|padding|>", "[PAD]"),
                "eos": ("<eos>", "<|endoftext|>", "</s>", "[SEP]"),
                "image": ("<image>",), "user": ("<user>",), "assistant": ("<assistant>",)}

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as exc:  # an optional extra
            raise DataError("a tokenizer.json needs the 'tokenizers' package: "
                            "pip install 'vlmsweep[hf]'") from exc
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file {path} does not exist")
        try:
            self._tok = _HF.from_file(str(path))
        except Exception as exc:
            raise DataError(f"{path}: not a valid tokenizer.json: {exc}") from exc
        unk = getattr(self._tok.model, "unk_token", None)
        if unk and self._tok.token_to_id(unk) is None:  # else the first unknown word fails training
            raise DataError(f"{path}: model.unk_token {unk!r} is not in the tokenizer's vocabulary")
        base = self._tok.get_vocab_size(with_added_tokens=True)
        extra: list[str] = []
        for role, names in self._ALIASES.items():
            found = next((self._tok.token_to_id(n) for n in names
                          if self._tok.token_to_id(n) is not None), None)
            if found is None:  # appended after the file's vocabulary, never clashing with it
                found = base + len(extra)
                extra.append(names[0])
            setattr(self, f"{role}_id", found)
        self._extra = {base + i: n for i, n in enumerate(extra)}
        self.vocab_size = base + len(extra)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        return self._tok.decode([i for i in ids if i not in self._extra], skip_special_tokens=True)


def encode_chunks(tok: Tokenizer, text: str, chunk_chars: int | None = None) -> Iterator[list[int]]:
    """`tok.encode(text)` as consecutive lists of ids, encoding at most chunk_chars (default
    CHUNK_CHARS) at a time.

    A long text is cut only just before the last whitespace character of a run that a word
    follows (`a   b` is cut as `a  ` + ` b`), so each piece starts with a space-prefixed word.
    The concatenated ids then equal the whole-text encoding for every tokenizer whose
    pre-tokenizer never joins characters across such a point: the world's word tokenizer and
    WordLevel/WordPiece with whitespace splitting (tokens never span whitespace), and byte-level
    BPE with the GPT-2 pattern (a word's leading space belongs to the word; a run of spaces splits
    before its last space). A piece with no whitespace in it (one "word" of chunk_chars) is cut
    where it stands: only there may the ids differ from the whole-text encoding.
    """
    chunk_chars = chunk_chars or CHUNK_CHARS
    start, n = 0, len(text)
    while n - start > chunk_chars:
        cut = _cut_point(text, start, start + chunk_chars)
        yield tok.encode(text[start:cut])
        start = cut
    yield tok.encode(text[start:])


def _cut_point(text: str, start: int, limit: int, window: int = 4096) -> int:
    """The last i in (start, limit] with text[i] whitespace and text[i + 1] not; else limit.
    Searched backwards a window at a time: typically one short regex scan."""
    high = limit
    while high > start:
        low = max(start + 1, high - window)
        found = [m.start() for m in _CUT_RE.finditer(text, low, min(high + 2, len(text)))]
        if found:
            return found[-1]
        high = low - 1
    return limit


def world_tokenizer() -> WordTokenizer:
    from models.data.world.lexicon import vocabulary
    return WordTokenizer(vocabulary())
