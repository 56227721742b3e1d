"""Chunked BPTT-through-TTT helpers: cutting a sequence into segments, detaching a carried cache, the loss.

A sequence of T tokens is cut into segments of `segment_len` tokens (the last may be shorter). Segments
run in order carrying the cache (KV + memory state); the loss of a segment is the sum of its token
losses divided by the number of loss targets in the whole sequence, so the sum over segments is the
mean token loss of the sequence, the same number an unsegmented forward gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_bounds(T: int, segment_len: int, strict: bool = False) -> list[tuple[int, int]]:
    """[(start, end), ...] covering 0..T in steps of `segment_len`; the last segment may be shorter
    unless `strict` (then T must be a multiple: static shapes for compiled / CUDA-graph runs)."""
    if not isinstance(segment_len, int) or segment_len <= 0:
        raise ValueError(f"bptt.segment_len={segment_len!r} is not allowed; it must be an int > 0.")
    if strict and T % segment_len:
        raise ValueError(f"bptt.strict_segments=true needs the sequence length to be a multiple of "
                         f"bptt.segment_len={segment_len}, got T={T}; set data.seq_len to a multiple of it "
                         f"(e.g. {-(-T // segment_len) * segment_len}) or bptt.strict_segments=false.")
    return [(s, min(s + segment_len, T)) for s in range(0, T, segment_len)]


def shift_targets(labels: Tensor) -> Tensor:
    """`[B, T]` HF-style labels -> `[B, T]` next-token targets: targets[:, t] = labels[:, t + 1], -100 at the end."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


def needed_positions(*masks: Tensor) -> Tensor | None:
    """1D positions (shared across the batch) where any mask `[B, S]` is True; None if none."""
    any_mask = torch.zeros_like(masks[0][0], dtype=torch.bool)
    for m in masks:
        any_mask |= m.any(0)
    if not any_mask.any():
        return None
    return any_mask.nonzero().squeeze(1)


def segment_loss_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum of token cross-entropies in fp32. logits `[B, S, V]`, targets `[B, S]` (-100 = ignored)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
