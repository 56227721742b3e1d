"""passkey, hashhop, mqar: many seeds, validation, curriculum knobs, token positions."""

import re

import pytest

import data_gen
from data_gen.common import Counter
from data_gen.registry import get_task
from data_gen.validate import validate

SEEDS = range(25)


def _valid(samples, **params):
    counter = Counter(None)
    for s in samples:
        assert validate(s, counter, params, get_task(s["task"]).check) == []
        assert s["length"] == len(s["input"].encode())


@pytest.mark.parametrize("haystack", ["noise", "essay"])
@pytest.mark.parametrize("length", [256, 1024])
def test_passkey_many_seeds(haystack, length):
    samples = data_gen.generate("passkey", len(SEEDS), length, seed=3, haystack=haystack, intro=length > 300)
    _valid(samples)
    for s in samples:
        key = s["answer"]
        assert re.fullmatch(r"\d{5}", key)
        assert s["input"].endswith("What is the pass key? The pass key is")
        assert s["meta"]["completion"] == " " + key
        assert s["length"] + len(s["meta"]["completion"]) <= length
        assert f"The pass key is {key}. Remember it. {key} is the pass key." in s["input"].split("\n")


def test_passkey_knobs():
    s = data_gen.generate("passkey", 5, 2048, seed=0, digits=9, depth=0.0)
    assert all(len(x["answer"]) == 9 for x in s)
    assert all(x["meta"]["needles"][0]["depth"] < 0.1 for x in s)
    deep = data_gen.generate("passkey", 5, 2048, seed=0, depth_min=0.9, depth_max=1.0)
    assert all(x["meta"]["needles"][0]["depth"] > 0.8 for x in deep)
    assert data_gen.generate("passkey", 1, 2048, seed=0)[0]["input"].startswith("There is an important info hidden")


def test_passkey_layout_is_longlora():
    s = data_gen.generate("passkey", 1, 600, seed=1, depth=0.5)[0]["input"]
    lines = s.split("\n")
    assert lines[0].startswith("There is an important info hidden inside a lot of irrelevant text.")
    assert lines[1].startswith("The grass is green. The sky is blue.")
    assert lines[2].startswith("The pass key is ") and lines[4] == "What is the pass key? The pass key is"


@pytest.mark.parametrize("hops,haystack,n_pairs", [(1, "noise", 0), (2, "essay", 3), (4, "pairs", 0), (3, "noise", 8)],
                         ids=["single", "2hop-essay", "4hop-pairs", "3hop-distractors"])
def test_hashhop_chains_solvable(hops, haystack, n_pairs):
    samples = data_gen.generate("hashhop", 20, 1536, seed=5, hops=hops, haystack=haystack, n_pairs=n_pairs)
    _valid(samples)
    for s in samples:
        chain = s["meta"]["chain"]
        assert len(chain) == hops + 1 and len(set(chain)) == hops + 1
        assert s["answer"] == chain[-1]
        links = [n for n in s["meta"]["needles"] if n["kind"] == "link"]
        assert sorted(n["hop"] for n in links) == list(range(1, hops + 1))
        table = dict(re.findall(r"The access token for (\S+) is (\w+)\.", s["input"]))
        node = chain[0]
        for _ in range(hops):
            node = table[node]
        assert node == s["answer"]


def test_hashhop_order_forward():
    s = data_gen.generate("hashhop", 5, 2048, seed=2, hops=3, order="forward")
    for x in s:
        links = sorted((n for n in x["meta"]["needles"] if n["kind"] == "link"), key=lambda n: n["hop"])
        assert [n["token_pos"] for n in links] == sorted(n["token_pos"] for n in links)


def test_mqar_ids_and_labels():
    samples = data_gen.generate("mqar", 20, 256, seed=0, num_kv_pairs=16)
    _ok = Counter(None)
    for s in samples:
        assert validate(s, _ok, None, get_task(s["task"]).check) == []
        ids, labels = data_gen.to_token_ids(s)
        assert len(ids) == len(labels) == 256 == s["length"]
        assert max(ids) < 256 and sum(lab != -100 for lab in labels) == 16
        keys = ids[0:32:2]
        assert all(ids.count(k) == 2 for k in keys)


def test_determinism_and_prefix_stability():
    a = data_gen.generate("hashhop", 6, 1024, seed=9, hops=2)
    b = data_gen.generate("hashhop", 3, 1024, seed=9, hops=2)
    assert a[:3] == b
    assert data_gen.generate("hashhop", 3, 1024, seed=10, hops=2) != b


def test_train_and_eval_seeds_disjoint():
    train = {s["answer"] for s in data_gen.generate("passkey", 30, 512, seed=0, digits=8, intro=False)}
    ev = {s["answer"] for s in data_gen.generate("passkey", 30, 512, seed=0, digits=8, intro=False, split="eval")}
    assert not train & ev


def test_to_token_ids_answer_only():
    s = data_gen.generate("passkey", 1, 512, seed=0, intro=False)[0]
    ids, labels = data_gen.to_token_ids(s)
    n = s["length"]
    assert ids[:n] == list(s["input"].encode()) and all(x == -100 for x in labels[:n])
    assert bytes(labels[n:]).decode() == " " + s["answer"]


def test_qwen3_tokenizer_lengths_and_positions():
    from titans.tokenizers import qwen3_tokenizer

    tok = qwen3_tokenizer()
    for s in data_gen.generate("passkey", 3, 1024, seed=0, tokenizer=tok, haystack="essay"):
        ids = tok(s["input"], add_special_tokens=False).input_ids
        assert s["length"] == len(ids) <= 1024 - s["meta"]["answer_budget"]
        pos = s["meta"]["needles"][0]["token_pos"]
        assert tok.decode(ids[pos:pos + 4]).strip().startswith("The pass")
        full, labels = data_gen.to_token_ids(s, tok)
        assert full[: len(ids)] == ids
