"""RULER's needle-in-a-haystack family (NVIDIA/RULER scripts/data/synthetic/niah.py), exact templates.

Input = RULER's niah template + answer prefix (base-model template "{task_template}"), with RULER's
singular rewrite when one value is asked for ("Some" -> "A", "are all" -> "is", "are" -> "is",
"numbers" -> "number"). Needle: "One of the special magic {type_needle_v} for {key} is: {value}.".
Haystacks: noise (RULER's noise sentence per line), essay (Paul Graham essays from the start,
needles at depths of RULER's 40-point grid, joined by spaces), needle (distractor needles per line).
Keys/values: wonderwords adjective-noun words, 7-digit numbers, uuid4s.
The haystack size is the largest whose `input` + tokens_to_generate fits `length`.

Differences with RULER, all towards unambiguity or availability: essays are cut at sentence ends
(RULER cuts at a word count, then splits with nltk); distractor keys of the needle haystack never
equal a real key; values never occur outside their needle (a sample that would is redrawn).
"""

from __future__ import annotations

import uuid

from data_gen.common import Piece, check_choice, check_range, make_sample
from data_gen.haystacks import NOISE, place_in_units, ruler_word, unit_counts
from data_gen.registry import register

TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)) as in RULER
NEEDLE_TYPES = ("words", "numbers", "uuids")
NIAH_HAYSTACKS = ("noise", "essay", "needle")

BASE = dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers", num_needle_k=1,
            num_needle_v=1, num_needle_q=1, tokens_to_generate=128)
VARIANTS = {
    "niah_single_1": dict(type_haystack="noise"),
    "niah_single_2": dict(),
    "niah_single_3": dict(type_needle_v="uuids"),
    "niah_multikey_1": dict(num_needle_k=4),
    "niah_multikey_2": dict(type_haystack="needle"),
    "niah_multikey_3": dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids"),
    "niah_multivalue": dict(num_needle_v=4),
    "niah_multiquery": dict(num_needle_q=4),
}


def ruler_template(num_q_v: int) -> str:
    """RULER's niah template + answer prefix, singularised when num_needle_q * num_needle_v == 1."""
    template = TEMPLATE + ANSWER_PREFIX
    if num_q_v == 1:
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        template = template.replace("answers", "answer")
    return template


def random_needle(rng, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return ruler_word(rng)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _validate_params(p: dict) -> None:
    check_choice("type_haystack", p["type_haystack"], NIAH_HAYSTACKS)
    check_choice("type_needle_k", p["type_needle_k"], NEEDLE_TYPES)
    check_choice("type_needle_v", p["type_needle_v"], NEEDLE_TYPES)
    for name in ("num_needle_k", "num_needle_v", "num_needle_q"):
        check_range(name, p[name], 1, 64)
    check_range("tokens_to_generate", p["tokens_to_generate"], 0)


def _check(sample: dict, params: dict) -> list[str]:
    text = sample["input"]
    for value in sample["meta"]["values"]:
        if text.count(value) != 1:
            return [f"value {value} occurs {text.count(value)} times, expected once (in its needle)"]
    return []


def niah(rng, length: int, counter, p: dict, task: str) -> dict:
    num_k = max(p["num_needle_k"], p["num_needle_q"])  # RULER: num_needle_k = max(k, q)
    keys: list[str] = []
    values: list[list[str]] = []
    needles: list[str] = []
    while len(keys) < num_k:
        key = random_needle(rng, p["type_needle_k"])
        if key in keys:
            continue
        keys.append(key)
        values.append([random_needle(rng, p["type_needle_v"]) for _ in range(p["num_needle_v"])])
        needles += [NEEDLE.format(type_needle_v=p["type_needle_v"], key=key, value=v) for v in values[-1]]
    rng.shuffle(needles)
    indices = rng.sample(range(num_k), p["num_needle_q"])
    queries = [keys[i] for i in indices]
    answers = [a for i in indices for a in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    num_q_v = p["num_needle_q"] * p["num_needle_v"]
    type_v = p["type_needle_v"][:-1] if num_q_v == 1 else p["type_needle_v"]
    prefix, suffix = ruler_template(num_q_v).format(type_needle_v=type_v, context="\0", query=query).split("\0")
    pieces = [Piece(n, "needle") for n in needles]
    budget = length - int(p["tokens_to_generate"])
    what = f"{task} (tokens_to_generate={p['tokens_to_generate']})"
    if p["type_haystack"] == "essay":
        from data_gen.haystacks import essay_sentences

        # RULER: sorted(int(len(sents) * depth / 100) for depth in random.sample(DEPTHS, n)), needles in order
        depths = sorted(d / 100 for d in rng.sample(DEPTHS, len(pieces)))
        units, counts, sep = essay_sentences(), unit_counts(counter, "essay"), " "
        slot_fn = None
    else:
        if p["type_haystack"] == "noise":
            units, counts = (NOISE,), unit_counts(counter, "noise_line")
        else:
            taken = set(keys)
            est = counter.count(needles[0]) + 1
            units = []
            while len(units) < budget // max(1, est - 4) + 8:
                key = random_needle(rng, p["type_needle_k"])
                if key not in taken:
                    units.append(NEEDLE.format(type_needle_v=p["type_needle_v"], key=key,
                                               value=random_needle(rng, p["type_needle_v"])))
            counts = counter.counts(units)
        sep, depths = "\n", [0.0] * len(pieces)

        def slot_fn(k):  # RULER: sorted(random.sample(range(num_haystack), n), reverse=True), zipped with needles
            return sorted(rng.sample(range(max(k, len(pieces))), len(pieces)), reverse=True)

    text, starts, n, k, slack = place_in_units(counter, units, counts, sep, 0, prefix, suffix, pieces, depths,
                                               budget, what, slot_fn)
    return make_sample(task, text, answers, " " + ", ".join(answers) + ".", counter, length,
                       int(p["tokens_to_generate"]), pieces, starts, n_tokens=n, fill_slack=slack,
                       haystack=p["type_haystack"], haystack_units=k, keys=keys,
                       values=[v for vs in values for v in vs],
                       queries=queries, type_needle_k=p["type_needle_k"], type_needle_v=p["type_needle_v"])


def _make(task: str):
    def gen(rng, length, counter, p):
        return niah(rng, length, counter, p, task)

    return gen


for _name, _over in VARIANTS.items():
    register(_name, dict(BASE, **_over), "ruler", f"RULER {_name}", _check, _validate_params)(_make(_name))
