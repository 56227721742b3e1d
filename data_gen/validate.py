"""Checks every sample passes before it is returned (and that the tests run on many seeds).

Generic checks: schema; `length` fits `target_length - answer_budget` and is not far below it;
needles sit where `meta` says; extractive answers occur in `input`; `input + completion` starts
with `input`. Task-specific checks (answer not leaked, chains solvable) are passed in by the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from data_gen.common import Counter

REQUIRED = ("input", "answer", "task", "length", "meta")
# Below the budget by more than this fraction (plus one haystack unit) means the fit failed.
FILL_TOLERANCE = 0.10
UNIT_SLACK = 400  # tokens; the longest essay sentence / code block the fit may leave out


def validate(sample: dict, counter: Counter, params: dict | None = None, check: Callable | None = None) -> list[str]:
    """Problems with `sample` (empty list when it is valid): the generic checks, then the task's own `check`
    (`TaskSpec.check(sample, params) -> problems`, run only when the generic checks pass)."""
    missing = [k for k in REQUIRED if k not in sample]
    if missing:
        return [f"missing keys {missing}"]
    meta = sample["meta"]
    problems: list[str] = []
    budget = meta["target_length"] - meta["answer_budget"]
    if sample["length"] > budget:
        problems.append(f"length {sample['length']} exceeds the budget {budget}")
    slack = meta.get("fill_slack", int(FILL_TOLERANCE * budget) + UNIT_SLACK)
    slack = max(slack, int(FILL_TOLERANCE * budget))
    if sample["length"] < budget - slack:
        problems.append(f"length {sample['length']} is more than {slack} below the budget {budget}")
    text = sample["input"]
    for needle in meta.get("needles", []):
        pos = needle["char_pos"]
        if text[pos:pos + len(needle["text"])] != needle["text"]:
            problems.append(f"needle not at char {pos}: {needle['text'][:40]!r}")
        elif counter.is_bytes and "<|" not in text:
            if text.encode()[needle["token_pos"]:][: len(needle["text"].encode())] != needle["text"].encode():
                problems.append(f"needle not at token {needle['token_pos']}")
    if meta.get("extractive", True) and "input_ids" not in meta:
        answers = sample["answer"] if isinstance(sample["answer"], list) else [sample["answer"]]
        for a in answers:
            if a not in text:
                problems.append(f"answer {a!r} not recoverable from input")
    if "input_ids" not in meta and not (meta.get("completion") or "").strip():
        problems.append("empty completion")
    if check is not None and not problems:
        problems.extend(check(sample, params or {}))
    return problems
