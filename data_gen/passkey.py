"""Passkey retrieval in the Landmark / LongLoRA format.

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. ...
    <noise> \\n The pass key is 12345. Remember it. 12345 is the pass key. \\n <noise>
    What is the pass key? The pass key is

Difficulty knobs for a curriculum (variations of the one skill):
- `digits`: key length; an int, a range `[3, 9]` (drawn per sample) or a mapping {digits: weight};
- `haystack`: `noise` (the LongLoRA filler), `essay` (Paul Graham essays), `code` (the standard
  library's source), `mixed` (one of the three per sample) or a mapping {kind: weight};
- the needle depth: uniform in [`depth_min`, `depth_max`] per sample, or a fixed `depth`;
- `intro`: drop the task description for very short sequences.
The key never occurs as a number anywhere else in the input (a longer number containing it is fine).
"""

from __future__ import annotations

import re

from data_gen.common import Piece, check_int_spec, check_range, draw_int, make_sample
from data_gen.haystacks import check_haystack, draw_haystack, place_in_haystack
from data_gen.registry import register

TASK_DESCRIPTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                    "I will quiz you about the important information there.")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

DEFAULTS = dict(digits=5, haystack="noise", depth=None, depth_min=0.0, depth_max=1.0, intro=True)


def _validate_params(p: dict) -> None:
    check_int_spec("digits", p["digits"], 1, 64)
    check_haystack(p["haystack"])
    if not isinstance(p["intro"], bool):
        raise ValueError(f"intro={p['intro']!r} is not allowed; allowed: true or false")
    check_range("depth_min", p["depth_min"], 0.0, 1.0)
    check_range("depth_max", p["depth_max"], p["depth_min"], 1.0)
    if p["depth"] is not None:
        check_range("depth", p["depth"], 0.0, 1.0)


def draw_depth(rng, p: dict) -> float:
    return float(p["depth"]) if p["depth"] is not None else rng.uniform(p["depth_min"], p["depth_max"])


def _check(sample: dict, params: dict) -> list[str]:
    key = sample["answer"]
    text = sample["input"]
    needle = sample["meta"]["needles"][0]
    found = [m.start() for m in re.finditer(rf"(?<![0-9]){key}(?![0-9])", text)]
    if len(found) != 2:
        return [f"pass key {key} occurs {len(found)} times as a number, expected 2 (both in the needle)"]
    start = needle["char_pos"]
    if not all(start <= i < start + len(needle["text"]) for i in found):
        return ["pass key occurrences are not inside the needle"]
    return []


@register("passkey", DEFAULTS, "passkey", "Landmark/LongLoRA pass key in noise, essays or code", _check,
          _validate_params)
def passkey(rng, length: int, counter, p: dict) -> dict:
    digits = draw_int(rng, p["digits"])
    haystack = draw_haystack(rng, p["haystack"])
    key = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    completion = " " + key
    budget_answer = counter.count(completion)
    needle = Piece(NEEDLE.format(key=key), "needle", sep="\n")
    prefix = TASK_DESCRIPTION + "\n" if p["intro"] else ""
    depth = draw_depth(rng, p)
    what = f"passkey (digits={digits}, intro={p['intro']})"
    text, starts, n, k, slack = place_in_haystack(rng, counter, haystack, prefix, "\n" + QUESTION, [needle],
                                                  [depth], length - budget_answer, what)
    return make_sample("passkey", text, key, completion, counter, length, budget_answer, [needle], starts,
                       n_tokens=n, haystack=haystack, haystack_units=k, fill_slack=slack, digits=digits)
