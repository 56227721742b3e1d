"""MQAR (multi-query associative recall, Zoology; Arora et al. 2023) directly in token ids.

    k1 v1 k2 v2 ... kN vN | x x k3 v3 x k1 v1 x ... (length tokens)

The first 2N tokens bind keys to values; every key is queried once later, at a gap drawn from
Zoology's power law (p(gap) ~ gap^(power_a - 1)), and followed by its value. `labels` is -100
everywhere except at each query key, whose label is the value (next-token prediction).
Keys come from [1, V/2), values from [V/2, V) as in Zoology. Difference with Zoology: filler
tokens never equal one of the sample's keys, so each key occurs exactly twice (bind + query).

`input` is the ids as decimal text (for inspection only); use `meta["input_ids"]` and
`meta["labels"]` (or `data_gen.to_token_ids`).
"""

from __future__ import annotations

import numpy as np

from data_gen.common import check_range, make_sample
from data_gen.registry import register

DEFAULTS = dict(num_kv_pairs=8, vocab_size=None, power_a=0.01, random_non_queries=True)


def _validate_params(p: dict) -> None:
    check_range("num_kv_pairs", p["num_kv_pairs"], 1)
    if p["vocab_size"] is not None:
        check_range("vocab_size", p["vocab_size"], 4)
    check_range("power_a", p["power_a"], 1e-6, 1.0)


def _check(sample: dict, params: dict) -> list[str]:
    ids, labels = sample["meta"]["input_ids"], sample["meta"]["labels"]
    pairs = dict(zip(ids[0:sample["meta"]["context_size"]:2], ids[1:sample["meta"]["context_size"]:2]))
    for t, lab in enumerate(labels):
        if lab != -100 and (pairs.get(ids[t]) != lab or ids[t + 1] != lab):
            return [f"label at {t} does not match the bound value"]
    if sum(lab != -100 for lab in labels) != len(pairs):
        return ["not every key is queried exactly once"]
    return []


@register("mqar", DEFAULTS, "mqar", "Zoology multi-query associative recall in token ids", _check, _validate_params)
def mqar(rng, length: int, counter, p: dict) -> dict:
    n = int(p["num_kv_pairs"])
    vocab = int(p["vocab_size"] or (256 if counter.is_bytes else len(counter.tokenizer)))
    half = vocab // 2
    if half - 1 < n or vocab - half < n:
        raise ValueError(f"vocab_size={vocab} is too small for num_kv_pairs={n}: need vocab_size >= {2 * n + 2}")
    context_size = 2 * n
    space = (length - context_size) // 2
    if space < n:
        raise ValueError(f"length too small for mqar: num_kv_pairs={n} needs length >= {4 * n}, got {length}")
    keys = rng.sample(range(1, half), n)
    values = rng.sample(range(half, vocab), n)
    ids = [t for kv in zip(keys, values) for t in kv]
    weights = p["power_a"] * np.arange(1, space + 1, dtype=np.float64) ** (p["power_a"] - 1)
    gaps = np.random.default_rng(rng.getrandbits(63)).choice(space, n, replace=False, p=weights / weights.sum())
    key_set = set(keys)
    fill = [t for t in range(vocab) if t not in key_set] if p["random_non_queries"] else [0]
    ids += rng.choices(fill, k=length - context_size)
    labels = [-100] * length
    order = rng.sample(range(n), n)
    for gap, i in zip(sorted(int(g) for g in gaps), order):
        pos = context_size + 2 * gap
        ids[pos], ids[pos + 1] = keys[i], values[i]
        labels[pos] = values[i]
    answers = [str(lab) for lab in labels if lab != -100]
    sample = make_sample("mqar", " ".join(map(str, ids)), answers, "", counter, length, 0, n_tokens=length,
                         input_ids=ids, labels=labels, context_size=context_size, vocab_size=vocab,
                         num_kv_pairs=n, extractive=False)
    sample["meta"]["completion"] = None
    return sample
