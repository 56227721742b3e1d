"""The real inference path of every benchmark: stream the context in segments, then decode greedily.

A context is fed to the model `segment_len` tokens at a time; the cache returned by one call (KV
and, for a patched model, the memory states) is passed to the next, so the memory learns the
context at test time exactly as it would in deployment. The answer is then generated one token at
a time from that cache, greedily, until a stop string, eos or `max_new_tokens`. Nothing is
teacher-forced. The context goes through `titans.streaming`, the one streaming loop (a plain Hugging Face model
works too: it is the standard `model(ids, cache=cache, use_cache=True)`, `past_key_values=` before
transformers 5.24).

`full_forward_answer` is the reference: the same greedy decoding recomputed from scratch with one
forward over the whole sequence per token (no cache). When the context fits the model's attention,
both must agree; a test holds `greedy_answer` to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from titans.compat import cache_kwargs, output_cache
from titans.streaming import stream, stream_segments


@dataclass
class Generation:
    """One greedy answer: the decoded text (cut before the first stop string) and its token ids."""

    text: str
    token_ids: list[int]
    stopped_by: str  # "stop" | "eos" | "max_new_tokens"


def _as_ids(input_ids, device) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sequence, [T] or [1, T], got shape {tuple(ids.shape)}")
    if ids.shape[1] < 1:
        raise ValueError("input_ids is empty; the context needs at least one token")
    return ids


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_segment_len(segment_len: int) -> None:
    if not isinstance(segment_len, int) or isinstance(segment_len, bool) or segment_len < 1:
        raise ValueError(f"segment_len={segment_len!r} is not allowed; it must be an int >= 1 "
                         f"(tokens per forward call while streaming the context)")


def stream_context(model, input_ids: torch.Tensor, segment_len: int, cache=None):
    """Feed `input_ids` [1, T] through `model` in segments of `segment_len` (`titans.streaming.stream`); return
    the cache. With T == 0 the given cache is returned unchanged.
    """
    _check_segment_len(segment_len)
    if input_ids.shape[1] == 0:
        return cache
    return stream(model, input_ids, segment_len, cache=cache)


def _stop_check(text: str, stop: Sequence[str]) -> int | None:
    cuts = [text.find(s) for s in stop if s and s in text]
    return min(cuts) if cuts else None


def _decode_loop(step, first_logits, tokenizer, max_new_tokens: int, stop: Sequence[str],
                 eos_ids: set[int]) -> Generation:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is not allowed; it must be an int >= 1")
    tokens: list[int] = []
    logits = first_logits
    for _ in range(max_new_tokens):
        nxt = int(logits.argmax(-1))
        if nxt in eos_ids:
            return Generation(tokenizer.decode(tokens), tokens, "eos")
        tokens.append(nxt)
        text = tokenizer.decode(tokens)
        cut = _stop_check(text, stop)
        if cut is not None:
            return Generation(text[:cut], tokens, "stop")
        if len(tokens) == max_new_tokens:
            break
        logits = step(nxt)
    return Generation(tokenizer.decode(tokens), tokens, "max_new_tokens")


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end generation: the tokenizer's eos and the model's generation_config eos."""
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return ids


@torch.no_grad()
def greedy_answer(model, tokenizer, input_ids, *, segment_len: int, max_new_tokens: int,
                  stop: Sequence[str] = ("\n",), eos_ids: set[int] | None = None, cache=None) -> Generation:
    """Stream the context `input_ids` ([T] or [1, T]) in segments, then decode greedily from the cache.

    The first T-1 tokens are streamed; the last context token is fed alone so its logits start the
    answer; every generated token is fed back through the same cache. Stops at the first of: a
    string of `stop` in the decoded answer (the answer is cut before it), an eos id, or
    `max_new_tokens` tokens. `cache`: a cache that already holds the tokens before `input_ids` (e.g. streamed
    by the caller, as benchmarks.diagnose does to read the memory on the way); it is continued in place.
    """
    model.eval()
    ids = _as_ids(input_ids, _device(model))
    cache = stream_context(model, ids[:, :-1], segment_len, cache=cache)
    state = {"cache": cache}

    def forward(tok: torch.Tensor) -> torch.Tensor:
        out = model(tok, **cache_kwargs(state["cache"]), use_cache=True)
        state["cache"] = output_cache(out)
        return out.logits[0, -1].float()

    first = forward(ids[:, -1:])
    step = lambda t: forward(torch.tensor([[t]], device=ids.device))
    eos = eos_token_ids(model, tokenizer) if eos_ids is None else eos_ids
    return _decode_loop(step, first, tokenizer, max_new_tokens, stop, eos)


@torch.no_grad()
def full_forward_answer(model, tokenizer, input_ids, *, max_new_tokens: int, stop: Sequence[str] = ("\n",),
                        eos_ids: set[int] | None = None) -> Generation:
    """Reference decoding: every step is one cache-free forward over context + answer so far.

    Only meaningful when the whole sequence fits the model's attention; used to check `greedy_answer`.
    """
    model.eval()
    state = {"ids": _as_ids(input_ids, _device(model))}

    def forward(tok: int | None) -> torch.Tensor:
        if tok is not None:
            state["ids"] = torch.cat([state["ids"], state["ids"].new_tensor([[tok]])], dim=1)
        return model(state["ids"], use_cache=False).logits[0, -1].float()

    eos = eos_token_ids(model, tokenizer) if eos_ids is None else eos_ids
    return _decode_loop(forward, forward(None), tokenizer, max_new_tokens, stop, eos)


@torch.no_grad()
def token_nll(model, input_ids, *, segment_len: int) -> torch.Tensor:
    """Next-token negative log-likelihood [T-1] (nats) of a sequence streamed in segments.

    Entry t is -log p(x_{t+1} | x_{<=t}), computed from the logits of the segment holding token t,
    with the cache (KV + memory) of all previous segments. Logits are turned into losses one
    segment at a time, so a large vocabulary costs [segment_len, V] at most.
    """
    _check_segment_len(segment_len)
    model.eval()
    ids = _as_ids(input_ids, _device(model))
    if ids.shape[1] < 2:
        raise ValueError(f"token_nll needs at least 2 tokens, got {ids.shape[1]}")
    losses = []
    for start, out in stream_segments(model, ids, segment_len, logits_to_keep=0):
        if start >= ids.shape[1] - 1:  # a last segment of only the final token: nothing to predict
            break
        targets = ids[0, start + 1:start + 1 + segment_len]
        logits = out.logits[0, : targets.shape[0]].float()  # (S', V): the last segment has no target for its end
        losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    return torch.cat(losses)
