"""Shared machinery of the generators: seeds, token counting, haystack fitting, sample assembly.

A generator builds its `input` from a fixed part (template, needles, question) and a haystack of
*units* (sentences, noise groups, distractor lines) whose token counts are known once per corpus.
`fit_units` picks how many units fit the budget from prefix sums of those counts (exact for the
byte tokenizer, an estimate for BPE that `Counter.count` of the final text then corrects), so a
long haystack is never re-tokenized inside a search loop.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "eval")


def sample_rng(task: str, split: str, seed: int, index: int, attempt: int = 0) -> random.Random:
    """The random stream of one sample. Train and eval seeds live in disjoint namespaces because the
    split name is hashed into the stream: (train, seed=0) and (eval, seed=0) share nothing."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed: {SPLITS}")
    key = f"titans-data_gen/{split}/{task}/{int(seed)}/{int(index)}/{int(attempt)}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


class Counter:
    """Counts tokens of text under a tokenizer, with an exact fast path for the byte tokenizer.

    `tokenizer=None` means `titans.tokenizers.byte_tokenizer()`: one token per UTF-8 byte.
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        if tokenizer is None:  # byte counting needs no tokenizer library (importing one costs seconds)
            self.is_bytes = True
        else:
            from titans.tokenizers import is_byte_tokenizer

            self.is_bytes = is_byte_tokenizer(tokenizer)
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self.name = "byte" if tokenizer is None else str(name)
        self._cache: dict[str, int] = {}

    def _safe_bytes(self, text: str) -> bool:
        return self.is_bytes and "<|" not in text  # special-token strings would be one token each

    def count(self, text: str) -> int:
        if self._safe_bytes(text):
            return len(text.encode("utf-8"))
        return len(self.encode(text))

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Token counts of many short texts, batched and memoised (haystack units repeat)."""
        if self.is_bytes and not any("<|" in t for t in texts):
            return [len(t.encode("utf-8")) for t in texts]
        missing = list({t for t in texts if t not in self._cache})
        if missing:
            enc = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            self._cache.update(zip(missing, map(len, enc)))
        return [self._cache[t] for t in texts]

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_positions(self, text: str, char_positions: Sequence[int]) -> list[int]:
        """Index of the token that contains each character position of `text`."""
        if not char_positions:
            return []
        if self._safe_bytes(text):
            return [len(text[:p].encode("utf-8")) for p in char_positions]
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end for _, end in enc["offset_mapping"]]
        return [min(bisect.bisect_right(ends, p), len(ends) - 1) for p in char_positions]


@dataclass
class Piece:
    """A needle (or any span whose token position matters) placed in the haystack."""

    text: str
    kind: str = "needle"  # needle | distractor | link | fact | definition
    info: dict[str, Any] = field(default_factory=dict)
    sep: str | None = None  # glue on both sides of this piece instead of the haystack's separator


def interleave(units: Sequence[str], pieces: Sequence[Piece], slots: Sequence[int], sep: str) -> tuple[str, list[int]]:
    """Join `units` with `sep`, putting piece i before unit `slots[i]` (slots sorted, ties keep order).

    A piece with its own `sep` uses it on both sides. Returns the text and each piece's character start.
    """
    order = sorted(range(len(pieces)), key=lambda i: (slots[i], i))
    items: list[tuple[str, str | None, int]] = []  # (text, own sep, piece index or -1)
    j = 0
    for u in range(len(units) + 1):
        while j < len(order) and (slots[order[j]] <= u or u == len(units)):
            items.append((pieces[order[j]].text, pieces[order[j]].sep, order[j]))
            j += 1
        if u < len(units):
            items.append((units[u], None, -1))
    parts: list[str] = []
    starts = [0] * len(pieces)
    offset = 0
    prev_sep: str | None = None
    for n, (text, own, idx) in enumerate(items):
        if n:
            glue = own if own is not None else (prev_sep if prev_sep is not None else sep)
            parts.append(glue)
            offset += len(glue)
        if idx >= 0:
            starts[idx] = offset
        parts.append(text)
        offset += len(text)
        prev_sep = own
    return "".join(parts), starts


def fit_units(unit_counts: Sequence[int], sep_tokens: int, budget: int) -> int:
    """Largest k such that sum(unit_counts[:k]) + k * sep_tokens <= budget (units cycle if needed)."""
    if budget <= 0 or not unit_counts:
        return 0
    total = sum(unit_counts) + len(unit_counts) * sep_tokens
    full, rest = divmod(budget, total) if total > 0 else (0, budget)
    prefix = [0]
    for c in unit_counts:
        prefix.append(prefix[-1] + c + sep_tokens)
    return full * len(unit_counts) + bisect.bisect_right(prefix, rest) - 1


def cycle_slice(items: Sequence, start: int, k: int) -> list:
    """k items of `items` starting at `start`, wrapping around."""
    n = len(items)
    if n == 0:
        return []
    start %= n
    out = list(items[start:start + k])
    while len(out) < k:
        out.extend(items[: k - len(out)])
    return out


def build_fitted(
    build: Callable[[int], tuple[str, Any]],
    unit_counts: Sequence[int],
    sep_tokens: int,
    fixed_tokens: int,
    budget: int,
    counter: Counter,
    what: str,
) -> tuple[str, Any, int, int]:
    """Build the longest input (`build(k)` with k haystack units) whose token count fits `budget`.

    The estimate from unit counts is exact for bytes; for BPE the final text is counted and k is
    shrunk (a few steps at most) until it fits. Returns (text, extra, k, tokens).
    """
    if fixed_tokens > budget:
        raise ValueError(f"length too small for {what}: the template alone needs {fixed_tokens} tokens "
                         f"(plus the answer budget) but only {budget} are available; raise `length` or "
                         f"shrink the template's parameters")
    k = fit_units(unit_counts, sep_tokens, budget - fixed_tokens)
    step = 1
    while True:
        text, extra = build(k)
        n = counter.count(text)
        if n <= budget:
            return text, extra, k, n
        if k == 0:
            raise ValueError(f"length too small for {what}: the input needs {n} tokens but only {budget} are "
                             f"available; raise `length`")
        over = n - budget
        avg = max(1.0, sum(unit_counts) / max(1, len(unit_counts)))
        k = max(0, k - max(step, int(over / avg) + 1))
        step *= 2


def check_params(task: str, given: dict, defaults: dict) -> dict:
    """Merge `given` into `defaults`; unknown names are a ValueError listing the allowed ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for task {task!r}; allowed: {sorted(defaults)}")
    out = dict(defaults)
    out.update(given)
    return out


def check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {list(allowed)}")


def check_range(name: str, value, lo, hi=None) -> None:
    if not isinstance(value, int | float) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={value!r} is not allowed; it must be a number {bound}")


def check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    """`value` is an int (not a bool, not a float) in [lo, hi]."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer {bound}")


def check_int_spec(name: str, value, lo: int, hi: int | None = None) -> None:
    """`value` is an int, a range `[low, high]` (drawn uniformly per sample, both ends included) or a mapping
    int -> weight (a weighted draw per sample), every int in [lo, hi]; a ValueError naming what is allowed."""
    bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    allowed = f"an integer {bound}, a range [low, high] or a mapping value -> weight (e.g. {{0: 1, 8: 2}})"
    if isinstance(value, int) and not isinstance(value, bool):
        check_int(name, value, lo, hi)
    elif isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
        for k, w in value.items():
            try:
                check_int(name, int(k) if isinstance(k, str) else k, lo, hi)
            except ValueError as e:
                raise ValueError(f"{name}={dict(value)!r}: key {k!r} is not allowed; allowed: {allowed}") from e
            if not isinstance(w, int | float) or isinstance(w, bool) or w < 0:
                raise ValueError(f"{name}={dict(value)!r}: weight {w!r} is not allowed; weights are numbers >= 0")
        if not any(w > 0 for w in value.values()):
            raise ValueError(f"{name}={dict(value)!r}: at least one weight must be > 0")
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        for v in value:
            check_int(name, v, lo, hi)
        if value[0] > value[1]:
            raise ValueError(f"{name}={list(value)!r} is not allowed; a range [low, high] needs low <= high")
    else:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def draw_int(rng: random.Random, value) -> int:
    """One sample's value of a `check_int_spec` parameter. A plain int draws nothing from `rng`."""
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        keys = sorted(value, key=int)  # the draw never depends on the mapping's order
        return int(rng.choices(keys, weights=[float(value[k]) for k in keys])[0])
    return rng.randint(int(value[0]), int(value[1]))


def widest_params(params: dict) -> dict:
    """`params` with every int range `[low, high]` or int -> weight mapping (see `check_int_spec`) replaced by its
    largest value: the variation a preflight generates to learn, before a long run, whether the most pairs / the
    longest keys still fit a length."""
    out = dict(params)
    for name, value in params.items():
        if isinstance(value, Mapping) and value and all(isinstance(k, int) or str(k).isdigit() for k in value):
            out[name] = max(int(k) for k, w in value.items() if w > 0)
        elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            out[name] = max(value)
    return out


def make_sample(
    task: str,
    text: str,
    answer: str | list[str],
    completion: str,
    counter: Counter,
    target_length: int,
    answer_budget: int,
    pieces: Sequence[Piece] = (),
    starts: Sequence[int] = (),
    n_tokens: int | None = None,
    **meta,
) -> dict:
    """Assemble the sample dict every task returns.

    `completion` is the exact text to append to `input` for teacher forcing (the answer with its
    leading space / closing words); `meta["needles"]` holds each piece's kind, token position,
    character position and relative depth.
    """
    n_tokens = counter.count(text) if n_tokens is None else n_tokens
    positions = counter.token_positions(text, list(starts))
    needles = [
        {"kind": p.kind, "text": p.text, "token_pos": tp, "char_pos": cp,
         "depth": round(tp / max(1, n_tokens), 4), **p.info}
        for p, tp, cp in zip(pieces, positions, starts)
    ]
    meta.update(needles=needles, completion=completion, target_length=target_length,
                answer_budget=answer_budget, tokenizer=counter.name)
    return {"input": text, "answer": answer, "task": task, "length": n_tokens, "meta": meta}
