"""Stream an arbitrarily long sequence through a (patched) model in segments, with bounded memory.

    cache = stream(model, ids[:, :-1], segment_len=2048)            # read a 1M-token haystack
    out = model.generate(ids, cache=cache, max_new_tokens=16, do_sample=False)  # past_key_values= before 5.24

`generate` sees that the cache already holds all but the last prompt token and feeds only that one.
`stream_segments` is the loop itself (every segment's output, e.g. for per-token losses); every streaming
caller (benchmarks' greedy decoding and perplexity, the perf benchmarks) goes through it.
With MAG/MAL/SWA the KV part of the cache is bounded by the window and with MAC by the segment; the
memory state has a fixed size, so memory use does not grow with the sequence (unpatched layers of a
partly patched model keep their full KV).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

from titans.compat import cache_kwargs, output_cache


@torch.no_grad()
def stream_segments(
    model: nn.Module,
    input_ids: Tensor,
    segment_len: int,
    cache: Cache | None = None,
    logits_to_keep: int = 1,
    **forward_kwargs: Any,
) -> Iterator[tuple[int, Any]]:
    """The streaming loop: feed `input_ids` `[B, L]` to `model` `segment_len` tokens per call, carrying the cache,
    and yield `(start, output)` for each segment (`output_cache(output)` is the cache after it).

    Args:
        model: a patched (or plain) causal LM; run under `torch.no_grad()` (test-time learning of the
            memory still happens: its updates are analytic, not autograd).
        input_ids: `[B, L]`, any L >= 1.
        segment_len: tokens per forward call (> 0). Results do not depend on it.
        cache: continue from this cache (None = a new sequence).
        logits_to_keep: logits of the last N positions of each segment (0 = all of them).
        **forward_kwargs: passed to every forward call (e.g. `attention_mask`).

    Sets `torch.set_flush_denormal(True)` (process-wide): over ~100K tokens the forget gate decays parts
    of the memory state into subnormal floats, which CPUs process ~10x slower (benchmarks/perf/streaming.py).
    """
    if not isinstance(segment_len, int) or isinstance(segment_len, bool) or segment_len <= 0:
        raise ValueError(f"stream(segment_len={segment_len!r}): allowed an int > 0 (tokens per forward call)")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"stream(input_ids=...): expected a LongTensor [B, L] with L >= 1, got {got}")
    torch.set_flush_denormal(True)
    for start in range(0, input_ids.shape[1], segment_len):
        out = model(input_ids[:, start : start + segment_len], **cache_kwargs(cache), use_cache=True,
                    logits_to_keep=logits_to_keep, **forward_kwargs)
        cache = output_cache(out)
        yield start, out


@torch.no_grad()
def stream(
    model: nn.Module,
    input_ids: Tensor,
    segment_len: int,
    cache: Cache | None = None,
    return_logits: bool = False,
    **forward_kwargs: Any,
) -> Cache | tuple[Cache, Tensor]:
    """Feed `input_ids` `[B, L]` to `model` `segment_len` tokens per call (`stream_segments`); return the cache
    after the last token (a `TitansCache` for a patched model) and, with `return_logits`, the logits of the
    last token, `[B, vocab]`. Arguments as `stream_segments`.
    """
    ((_, out),) = deque(stream_segments(model, input_ids, segment_len, cache, **forward_kwargs), maxlen=1)
    cache = output_cache(out)
    return (cache, out.logits[:, -1]) if return_logits else cache
