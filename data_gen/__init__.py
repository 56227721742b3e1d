"""Seeded synthetic long-context data: `generate(task, n, length, seed, tokenizer=None, **params)`.

Every sample is a dict:
    input   str        what the model sees; ends with the answer prefix
    answer  str|list   the gold answer(s), without leading space
    task    str
    length  int        tokens of `input` under the tokenizer (None -> the byte tokenizer)
    meta    dict       needles (kind, token_pos, char_pos, depth), completion (exact text to append
                       for teacher forcing), target_length, answer_budget, task-specific fields;
                       MQAR also carries input_ids and labels
`length` is a budget: `sample.length + meta.answer_budget <= length` (RULER: answer budget =
tokens_to_generate; other tasks: the completion's tokens). `split="eval"` draws from a seed
namespace disjoint from `split="train"`.
"""

from __future__ import annotations

from data_gen import (  # noqa: F401 - importing registers the tasks
    babilong,
    code_retrieval,
    dependency,
    hashhop,
    mqar,
    passkey,
    ruler,
    ruler_niah,
)
from data_gen.common import SPLITS, Counter
from data_gen.registry import TASKS, generate_one, get_task, resolve_params

__all__ = ["TASKS", "SPLITS", "generate", "iter_samples", "resolve_tokenizer", "to_token_ids", "Mixture"]


def resolve_tokenizer(tokenizer):
    """None -> None (byte counting), a string -> `titans.tokenizers.load_tokenizer`, else as given."""
    if tokenizer is None or tokenizer == "byte":
        return None
    if isinstance(tokenizer, str):
        from titans.tokenizers import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def iter_samples(task: str, n: int, length: int, seed: int = 0, tokenizer=None, split: str = "train",
                 start: int = 0, **params):
    """Yield samples start..start+n-1 of (task, seed, split) one by one."""
    get_task(task)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} is not allowed; it must be an int >= 0")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed: {SPLITS}")
    p = resolve_params(task, params)
    counter = tokenizer if isinstance(tokenizer, Counter) else Counter(resolve_tokenizer(tokenizer))
    for i in range(start, start + n):
        yield generate_one(task, i, length, seed, counter, p, split)


def generate(task: str, n: int, length: int, seed: int = 0, tokenizer=None, split: str = "train",
             **params) -> list[dict]:
    """`n` validated samples of `task` whose `input` fits `length` tokens (see module docstring).

    Sample i depends only on (task, split, seed, i, length, params, tokenizer): the first samples of
    a larger `n` are the same. Unknown task or parameter, or a length too small for the template:
    ValueError naming it and what is allowed.
    """
    return list(iter_samples(task, n, length, seed, tokenizer, split, **params))


def to_token_ids(sample: dict, tokenizer=None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for answer-only teacher forcing: tokens of `input + completion`, labels
    -100 on the input part. The input tokens are a prefix of the whole under the byte tokenizer
    (and in practice under BPE, since inputs end before a space); MQAR returns its own ids/labels."""
    meta = sample["meta"]
    if "input_ids" in meta:
        return list(meta["input_ids"]), list(meta["labels"])
    counter = Counter(resolve_tokenizer(tokenizer))
    prompt = counter.encode(sample["input"])
    full = counter.encode(sample["input"] + meta["completion"])
    if full[: len(prompt)] != prompt:
        raise ValueError(f"{sample['task']}: input tokens are not a prefix of input + completion under "
                         f"{counter.name}; tokenize them separately")
    return full, [-100] * len(prompt) + full[len(prompt):]


from data_gen.mixture import Mixture  # noqa: E402 - needs generate()
