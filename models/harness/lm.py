"""The project's model as an lm-evaluation-harness `LM` (registered as "vlmsweep").

lm-eval hands a model strings; this class tokenizes them with the step's tokenizer and scores them
with the step's model (text only: no image), as lm-eval's own Hugging Face model (`HFLM`) does:

- `loglikelihood(context, continuation)`: trailing spaces of the context move to the continuation,
  the continuation's tokens are those of context+continuation past the context's; an empty context
  is the EOS token. Sequences longer than the model's window lose their left end. Requests are
  scored longest first, `batch_size` right-padded rows a forward (causal attention makes right
  padding exact), and returned in request order with whether greedy decoding gives the continuation.
- `loglikelihood_rolling(text)`: the text's tokens in disjoint windows of the model's length, each
  window conditioned on the tokens before it (lm-eval's `get_rolling_token_windows`), summed.
- `generate_until(context, gen_kwargs)`: greedy decoding up to `max_gen_toks` (lm-eval's default
  256) or EOS, cut at the first `until` string; batched longest context first.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from models.evaluate import _forward_rows, _pad_id, batched_greedy

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until
DEFAULT_BATCH = 64  # the eval step's batch (models.evaluate.evaluate)


@register_model("vlmsweep")
class VLMSweepLM(LM):
    """`model`: a `models.vlm.VLM` (its LM is what is scored); `tokenizer`: a `models.data` tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int | str | None = DEFAULT_BATCH,
                 **_: Any) -> None:
        super().__init__()
        self.model, self.tok = model, tokenizer
        self.batch_size = int(batch_size) if batch_size not in (None, "auto") else DEFAULT_BATCH
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_length = model.lm.config.max_seq_len
        self.prefix_id = tokenizer.eos_id
        self.pad = _pad_id(tokenizer.image_id, tokenizer.eos_id)
        self._device = next(model.parameters()).device

    # --- tokenization, as HFLM does it -----------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            return [self.prefix_id], self.tok.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok.encode(context + continuation)
        head = self.tok.encode(context)
        return head, whole[len(head):]

    # --- scoring ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-probability, greedy?) of each continuation given its context."""
        order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0] + pairs[i][1]),
                                                         tuple(pairs[i][0] + pairs[i][1])))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1):][:-1] for i in chunk]
            logits = _forward_rows(self.model, rows, [None] * len(rows), self.tok.image_id, self.pad)
            for r, i in enumerate(chunk):
                n, end = len(pairs[i][1]), len(rows[r])
                if n == 0:
                    continue
                # log-softmax at the continuation's positions only: the same numbers as over the
                # whole row (each position is normalised on its own), a fraction of the work
                logp = torch.log_softmax(logits[r, end - n:end].float(), dim=-1)
                cont = torch.tensor(pairs[i][1], dtype=torch.long, device=logp.device)
                out[i] = (float(logp.gather(1, cont[:, None]).sum()), bool((logp.argmax(-1) == cont).all()))
        self.model.train(was_training)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self._score([self._encode_pair(*req.args) for req in requests])
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for n, req in enumerate(requests):
            tokens = self.tok.encode(req.args[0])
            for window in lm_utils.get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_id,
                                                             max_seq_len=self.max_length, context_len=1):
                windows.append(lm_utils.make_disjoint_window(window))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, self._score(windows)):
            totals[n] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # --- generation ------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        items, stops = [], []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample"):
                raise ValueError("the vlmsweep lm-eval model decodes greedily; do_sample is not supported")
            until = kwargs.get("until") or []
            stops.append([until] if isinstance(until, str) else list(until))
            new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            prompt = self.tok.encode(context) or [self.prefix_id]
            prompt = prompt[-max(1, self.max_length - new):]
            items.append(SimpleNamespace(prompt_tokens=prompt, image=None, max_new_tokens=new))
        order = sorted(range(len(items)), key=lambda i: -len(items[i].prompt_tokens))
        was_training = self.model.training
        self.model.eval()
        outs = batched_greedy(self.model, [items[i] for i in order], image_id=self.tok.image_id,
                              image_tokens=0, eos_id=self.tok.eos_id, pad=self.pad, batch_size=self.batch_size)
        self.model.train(was_training)
        texts = [""] * len(items)
        for i, ids in zip(order, outs):
            text = self.tok.decode(ids)
            for stop in stops[i]:
                if stop:
                    text = text.split(stop)[0]
            texts[i] = text
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts
