"""The data layer: the built-in world, real-format readers, and token-ratio mixing, behind the
few functions the training stages call. Everything returns numpy (no torch here).

Sources are `models.steps.DataSource`s: kind `world` serves every role; `jsonl`/`parquet` text,
`tokens` pre-tokenised text (`models.data.tokens`), `webdataset`/`parquet_images` image-caption
pairs, `llava` fine-tune data, `vqa_jsonl`/`mc_jsonl`
evaluation files.
"""

from __future__ import annotations

from models.data.errors import BadRecordError, DataError, EmptySourceError
from models.data.evaltasks import file_tasks, world_tasks
from models.data.finetune import FinetuneStream, InstructionSet
from models.data.heldout import heldout_captions, heldout_text
from models.data.packing import TextPacker
from models.data.sources import open_source
from models.data.streams import BatchStream, CaptionPairStream, MixedStream, TextStream
from models.data.tokenizer import HFTokenizer, Tokenizer, world_tokenizer
from models.data.types import Batch, EvalItem, EvalTask

DEFAULT_IMAGE_TOKENS = 4  # every world preset: a 4×4 patch grid, pixel-shuffled 2×2 (models.presets)


def get_tokenizer(source, vocab_limit: int | None = None) -> Tokenizer:
    """The world's word-level tokenizer, or the `tokenizer` option's local tokenizer.json."""
    if source.kind == "world":
        tok = world_tokenizer()
    elif source.kind == "tokens":  # the tokenizer the tokens were written with
        from models.data.tokens import tokenizer_path

        tok = HFTokenizer(tokenizer_path(source))
    else:
        path = source.option("tokenizer")
        if not path:
            raise DataError(f"data source {source.name!r} ({source.kind}) needs a 'tokenizer' "
                            "option: the path of a local tokenizer.json")
        tok = HFTokenizer(path)
    if vocab_limit is not None and tok.vocab_size > vocab_limit:
        raise DataError(f"data source {source.name!r}: tokenizer has {tok.vocab_size} tokens but "
                        f"the model has only {vocab_limit} embedding rows")
    return tok


def text_stream(source, tokenizer, *, batch_size: int, seq_len: int, seed: int,
                on_bad_record: str = "error") -> BatchStream:
    """Packed documents, EOS-separated; every position is a text target."""
    src = open_source(source, "text", seed=seed, on_bad_record=on_bad_record)
    return TextStream(src, tokenizer, batch_size=batch_size, seq_len=seq_len)


def mixed_stream(text_source, image_source, instruction_source, tokenizer, *, batch_size: int,
                 seq_len: int, image_ratio: float, instruction_share: float, image_size: int,
                 image_tokens: int, seed: int, on_bad_record: str = "error") -> BatchStream:
    """The image stage's mix; see `models.data.streams` for how tokens are counted."""
    def open_(source, role):
        return None if source is None else open_source(source, role, image_size=image_size,
                                                       seed=seed, on_bad_record=on_bad_record)
    return MixedStream(open_(text_source, "text") if image_ratio < 1.0 else None,
                       open_(image_source, "pairs"),
                       open_(instruction_source, "instructions") if instruction_share > 0 else None,
                       tokenizer, batch_size=batch_size, seq_len=seq_len, image_ratio=image_ratio,
                       instruction_share=instruction_share, image_size=image_size,
                       image_tokens=image_tokens)


def caption_pairs(source, tokenizer, *, batch_size: int, image_size: int, max_caption_len: int,
                  seed: int, on_bad_record: str = "error") -> BatchStream:
    """Image-caption pairs for contrastive encoder pre-training: tokens = captions [B, Lc]."""
    src = open_source(source, "pairs", image_size=image_size, seed=seed, on_bad_record=on_bad_record)
    return CaptionPairStream(src, tokenizer, batch_size=batch_size, image_size=image_size,
                             max_caption_len=max_caption_len)


def finetune_epochs(source, tokenizer, *, batch_size: int, seq_len: int, image_size: int,
                    image_tokens: int, epochs: int, seed: int, max_samples: int = 0,
                    on_bad_record: str = "error", replay_source=None,
                    replay_share: float = 0.0) -> FinetuneStream:
    """`epochs` passes over the instruction data; finite, with len() and exact resume. With
    `replay_source` (text data), `replay_share` of each batch's rows are its packed text."""
    replay = None
    if replay_source is not None and replay_share > 0:
        replay = TextPacker(open_source(replay_source, "text", seed=seed, on_bad_record=on_bad_record),
                            tokenizer)
    return FinetuneStream(InstructionSet(source, image_size, max_samples), tokenizer,
                          batch_size=batch_size, seq_len=seq_len, image_tokens=image_tokens, epochs=epochs, seed=seed,
                          max_samples=max_samples, on_bad_record=on_bad_record, replay=replay,
                          replay_share=replay_share)


def eval_source_parts(source) -> tuple[str, ...]:
    """The independent shares of `prepare_eval_source(source)`, so workers can split it: the built-in
    world's VL tasks with a blind-answer floor; nothing for other sources."""
    if source.kind == "world":
        from models.data.world.bench import BLIND_TASKS

        return BLIND_TASKS
    return ()


def prepare_eval_source(source, parts: tuple[str, ...] | None = None) -> None:
    """Work every evaluation of `source` shares, done once per machine before steps run: the built-in
    world's blind-answer floors (about 5 s of CPU per task; `world.bench.answer_prior_rate`), all of
    them or those of `parts` (from `eval_source_parts`)."""
    if source.kind == "world":
        from models.data.world.bench import BLIND_TASKS, blind_rates
        from models.data.world.entities import make_world, world_identity

        blind_rates(make_world(*world_identity(source)), BLIND_TASKS if parts is None else parts)


def eval_tasks(source, tokenizer, *, groups=("vl", "text"), tasks=(), n_per_task: int,
               image_size: int, seed: int, image_tokens: int = DEFAULT_IMAGE_TOKENS,
               prompts=()) -> list[EvalTask]:
    """Benchmarks of a source (world: every VL and text task; files: one task per file, `prompts`
    (task -> template) replacing their families' templates; the world's prompts are fixed)."""
    kw = dict(groups=tuple(groups), tasks=tuple(tasks), n_per_task=n_per_task,
              image_size=image_size, image_tokens=image_tokens, seed=seed)
    if source.kind == "world":
        return world_tasks(source, tokenizer, **kw)
    if source.kind in ("vqa_jsonl", "mc_jsonl"):
        return file_tasks(source, tokenizer, prompts=prompts, **kw)
    raise DataError(f"data source {source.name!r}: kind {source.kind!r} holds no benchmarks; use "
                    "'world', 'vqa_jsonl' or 'mc_jsonl'")


__all__ = ["Batch", "BatchStream", "BadRecordError", "DataError", "EmptySourceError", "EvalItem",
           "EvalTask", "Tokenizer", "caption_pairs", "eval_source_parts", "eval_tasks", "finetune_epochs",
           "prepare_eval_source",
           "get_tokenizer", "heldout_captions", "heldout_text", "mixed_stream", "text_stream"]
