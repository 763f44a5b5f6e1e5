"""Huge text records: peak memory of packing one document of 10/50/100 MB with a byte-level BPE
tokenizer.json (bounded pieces: flat in the document's size, vs ~140x it when encoded at once), and
the read time of one long line of prose-like text from `.jsonl.zst` against its size (linear).

Each size runs in a fresh process (peak RSS = its VmHWM): it reads the record from a .jsonl shard
through the real reader and packs all its tokens with `TextPacker` 64K tokens at a time, as a
trunk does. `--whole MB` adds the old way (one `encode` of the whole document) for comparison.
Last line: `result: …`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the dax is red . a wug can be eaten ? it sits left of the blue cube , and 3 + 4 = 7 .".split()


def write_tokenizer(path: Path) -> None:
    """A small byte-level BPE (GPT-2 pre-tokenizer) trained on the benchmark's words."""
    import tokenizers as tk

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tk.trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer)
    tok.save(str(path))


def document(mb: int) -> str:
    words = (WORDS * (mb * 1024 * 1024 // 40 + 1))
    return " ".join(words)[: mb * 1024 * 1024]


def child(kind: str, shard: str, tokenizer: str) -> None:
    """In a fresh process: pack (or encode whole) the shard's one document; print VmHWM in MB."""
    from models.data.packing import TextPacker
    from models.data.readers import iter_jsonl
    from models.data.tokenizer import HFTokenizer

    tok = HFTokenizer(tokenizer)
    ((_, rec),) = list(iter_jsonl(shard))
    start = time.perf_counter()
    if kind == "whole":
        n = len(tok.encode(rec["text"]))
    else:
        class Once:  # the one document, then the end
            texts = [rec.pop("text")]

            def next(self):
                if not self.texts:
                    raise EOFError
                return self.texts.pop(), {}

        packer = TextPacker(Once(), tok)
        try:
            while True:
                packer.take(65536)
        except EOFError:
            n = packer.pos - 1  # the document's tokens (its EOS left out)
    hwm = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    print(json.dumps({"peak_rss_mb": hwm, "tokens": n, "seconds": time.perf_counter() - start}))


def peak(kind: str, shard: Path, tokenizer: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(shard), str(tokenizer)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def random_text(mb: int) -> str:
    """Seeded random letters in words of 1-8: text that compresses like prose (~2x), so zstd hands
    it back in ~128 KB blocks (a repetitive document comes back in a few huge blocks and hides a
    quadratic reader)."""
    import numpy as np

    rng = np.random.default_rng(0)
    chars = rng.integers(97, 123, mb * 1024 * 1024, dtype=np.uint8)
    chars[rng.random(chars.size) < 0.18] = 32
    return chars.tobytes().decode("ascii")


def zst_read_seconds(mb: int, folder: Path, lines=None) -> float:
    import zstandard

    from models.data.readers import _lines

    path = folder / f"line-{mb}.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress((json.dumps({"text": random_text(mb)}) + "\n").encode()))
    lines = lines or _lines
    start = time.perf_counter()
    for _ in lines(str(path)):
        pass
    return time.perf_counter() - start


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 50, 100], help="document sizes, MB")
    parser.add_argument("--zst-sizes", type=int, nargs="+", default=[25, 50, 100], help="line sizes, MB")
    parser.add_argument("--whole", type=int, nargs="*", default=[10], help="sizes also encoded at once, MB")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = folder / "tokenizer.json"
        write_tokenizer(tokenizer)
        for mb in args.sizes:
            shard = folder / f"doc-{mb}.jsonl"
            shard.write_text(json.dumps({"text": document(mb)}) + "\n")
            for kind in ["chunked"] + (["whole"] if mb in args.whole else []):
                r = peak(kind, shard, tokenizer)
                print(f"{mb:>4} MB document, {kind:<7}: peak RSS {r['peak_rss_mb']:,.0f} MB, "
                      f"{r['tokens']:,} tokens in {r['seconds']:.1f} s", flush=True)
                results.append(f"{mb}MB {kind} {r['peak_rss_mb']:.0f}MB")
            shard.unlink()
        for mb in args.zst_sizes:
            s = zst_read_seconds(mb, folder)
            print(f"{mb:>4} MB line from .jsonl.zst: read in {s:.2f} s ({mb / s:.0f} MB/s)", flush=True)
            results.append(f"zst {mb}MB {s:.2f}s")
    print("result: peak RSS " + ", ".join(results))


if __name__ == "__main__":
    main()
