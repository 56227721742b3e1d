"""dependency, babilong (qa1-qa5), code_retrieval: many seeds, solvable, not leaked."""

import pytest

import data_gen
from data_gen.common import Counter
from data_gen.registry import get_task
from data_gen.validate import validate


def _all_valid(samples):
    counter = Counter(None)
    for s in samples:
        assert validate(s, counter, None, get_task(s["task"]).check) == []
        assert s["length"] == len(s["input"].encode())


@pytest.mark.parametrize("hops", [2, 3, 4])
def test_dependency_hops(hops):
    samples = data_gen.generate("dependency", 20, 1536, seed=hops, hops=hops)
    _all_valid(samples)
    kinds = {s["meta"]["question"] for s in samples}
    assert kinds == {"who", "yesno"}
    for s in samples:
        names = s["meta"]["chain"]
        assert len(set(names)) == hops + 1
        if s["meta"]["question"] == "who":
            assert s["input"].count(s["answer"]) == 1
        else:
            assert s["answer"] in ("yes", "no")


@pytest.mark.parametrize("qa", ["qa1", "qa2", "qa3", "qa4", "qa5"])
def test_babilong_style(qa):
    samples = data_gen.generate("babilong", 15, 1536, seed=0, qa=qa)
    _all_valid(samples)
    for s in samples:
        assert "<context>\n" in s["input"] and s["input"].endswith("\nAnswer:")
        facts = [n for n in s["meta"]["needles"] if n["kind"] == "fact"]
        assert [f["token_pos"] for f in facts] == sorted(f["token_pos"] for f in facts)


def test_code_retrieval_not_leaked():
    samples = data_gen.generate("code_retrieval", 8, 2048, seed=0, max_files=60)
    _all_valid(samples)
    for s in samples:
        assert s["input"].count(s["answer"]) == 1
        assert s["input"].endswith(f"def {s['meta']['name']}(")
        assert s["meta"]["needles"][0]["depth"] < 0.5  # token depth; units are placed at <= 0.2


def test_code_retrieval_bad_root(tmp_path):
    with pytest.raises(ValueError, match="root="):
        data_gen.generate("code_retrieval", 1, 2048, root=str(tmp_path / "missing"))


def test_mixture_stream_deterministic():
    cfg = {"components": [{"task": "passkey", "weight": 2}, {"task": "hashhop", "params": {"hops": 2}},
                          {"task": "mqar", "lengths": [128]}], "lengths": [512, 1024], "seed": 4}
    a = data_gen.Mixture.from_config(cfg)
    first = [s for _, s in zip(range(12), a)]
    assert {s["task"] for s in first} == {"passkey", "hashhop", "mqar"}
    assert [s["meta"]["target_length"] for s in first if s["task"] == "mqar"][0] == 128
    resumed = data_gen.Mixture.from_config(cfg).iterate(start=5)
    again = [next(resumed) for _ in range(7)]
    assert again == first[5:]
    with pytest.raises(ValueError, match="unknown mixture key"):
        data_gen.Mixture.from_config(dict(cfg, colour=1))
