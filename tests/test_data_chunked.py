"""Documents are tokenised in bounded pieces: the ids equal the whole-document encoding for the
world tokenizer, a whitespace WordLevel tokenizer and byte-level BPE (GPT-2 pre-tokenizer), the
tokenizer never sees more than one piece, and a packer resumed mid-document continues exactly."""

from __future__ import annotations

import random

import pytest

from models.data.packing import TextPacker
from models.data.tokenizer import HFTokenizer, encode_chunks, world_tokenizer

WORDS = ["the", "dax", "is", "red", ".", "a", "wug", "can", "be", "eaten", "?", "3", "+", "4"]


def _document(n_words: int, seed: int = 0) -> str:
    """Words with runs of spaces, newlines and tabs between them: the cases a cut must respect."""
    rng = random.Random(seed)
    gaps = [" ", " ", " ", "  ", "   ", "\n", " \n ", "\t", "\n\n"]
    return "".join(rng.choice(WORDS) + rng.choice(gaps) for _ in range(n_words)).strip()


def _byte_level_bpe(tmp_path) -> HFTokenizer:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_document(400, seed) for seed in range(5)], trainer)
    tok.save(str(tmp_path / "bpe.json"))
    return HFTokenizer(tmp_path / "bpe.json")


def _word_level(tmp_path) -> HFTokenizer:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *WORDS])}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "words.json"))
    return HFTokenizer(tmp_path / "words.json")


TOKENIZERS = {"world": lambda tmp: world_tokenizer(), "wordlevel": _word_level, "byte-level bpe": _byte_level_bpe}


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("chunk_chars", [12, 17, 64, 1000])  # longer than any word
def test_chunked_ids_equal_the_whole_document_encoding(tmp_path, name, chunk_chars):
    tok = TOKENIZERS[name](tmp_path)
    for seed in range(3):
        text = _document(300, seed)
        pieces = list(encode_chunks(tok, text, chunk_chars=chunk_chars))
        assert [i for p in pieces for i in p] == tok.encode(text)
        if chunk_chars < 100:
            assert len(pieces) > 10  # it really was cut


def test_a_word_longer_than_a_piece_is_cut_where_it_stands(tmp_path):
    tok = world_tokenizer()
    text = "dax " + "x" * 50 + " wug"
    ids = [i for p in encode_chunks(tok, text, chunk_chars=20) for i in p]
    assert len(ids) > len(tok.encode(text))  # the only case where the ids may differ: stated


class _Recording:
    """A real tokenizer that remembers the longest text it was asked to encode at once."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0
        self.eos_id = tok.eos_id

    def encode(self, text):
        self.longest = max(self.longest, len(text))
        return self.tok.encode(text)


class _Docs:
    """A text source of fixed documents, resumable by index (as the shard sources are)."""

    def __init__(self, docs):
        self.docs, self.i = docs, 0

    def next(self):
        state = {"i": self.i}
        text = self.docs[self.i % len(self.docs)]
        self.i += 1
        return text, state

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_the_packer_encodes_a_huge_document_a_piece_at_a_time_and_resumes_exactly(tmp_path, monkeypatch):
    from models.data import tokenizer as tk

    monkeypatch.setattr(tk, "CHUNK_CHARS", 5000)
    tok = _Recording(_byte_level_bpe(tmp_path))
    docs = [_document(20, 1), _document(40_000, 2), _document(30, 3)]  # the middle one: ~200K chars
    whole = [i for d in docs for i in tok.tok.encode(d) + [tok.eos_id]]
    packer = TextPacker(_Docs(docs), tok)
    got = packer.take(len(whole) // 3).tolist()
    state = packer.state_dict()  # mid-way through the huge document
    assert state["doc"] == {"i": 1} and 0 < state["pos"]
    rest = packer.take(len(whole) - len(got)).tolist()
    assert got + rest == whole
    assert tok.longest <= 5000 < len(docs[1]) // 10
    small = _Recording(tok.tok)
    resumed = TextPacker(_Docs(docs), small)
    resumed.load_state_dict(state)
    assert resumed.take(len(rest)).tolist() == rest
    assert got + rest == whole


def test_encoding_memory_is_bounded_by_the_piece_not_the_document(tmp_path, monkeypatch):
    from models.data import tokenizer as tk

    monkeypatch.setattr(tk, "CHUNK_CHARS", 1000)
    tok = _Recording(world_tokenizer())
    doc = _document(50_000, 4)  # ~250K chars
    packer = TextPacker(_Docs([doc]), tok)
    packer.take(100)
    assert tok.longest <= 1000  # only the first piece was encoded to give 100 tokens
    packer.take(len(world_tokenizer().encode(doc)))
    assert tok.longest <= 1000
