"""experiments.hashhop_errors: misses of distractor hash hops split into wrong link / right link misspelt."""

import json

import pytest

import data_gen
from data_gen.common import Counter
from data_gen.hashhop import LINK_RE
from experiments import hashhop_errors
from titans.tokenizers import byte_tokenizer

PARAMS = {"hops": 1, "intro": False, "n_pairs": 3}


def _record(index, prediction, length=600, params=PARAMS):
    cell = json.dumps({"length": length, "params": params, "task": "hashhop"}, sort_keys=True)
    return {"cell": cell, "index": index, "prediction": prediction, "fingerprint": {"weights": "w"}}


def _sample(index, length=600, params=PARAMS):
    counter = Counter(byte_tokenizer())
    s = next(data_gen.iter_samples("hashhop", 1, length, 0, counter, split="eval", start=index, **params))
    return s["answer"], [m.group(2) for m in LINK_RE.finditer(s["input"])]


def test_classify_correct_misspelt_other_and_none():
    links = ["aaaaaa", "bbbbbb", "c1c2c3"]
    assert hashhop_errors.classify(" bbbbbb", "bbbbbb", links)["kind"] == "correct"
    miss = hashhop_errors.classify(" bbbxbb", "bbbbbb", links)
    assert miss["kind"] == "queried_misspelt" and miss["first_wrong"] == 3 and miss["rank"] == 1
    other = hashhop_errors.classify(" c1c2c9", "bbbbbb", links)
    assert other["kind"] == "other_link" and other["other_rank"] == 0 and other["first_wrong"] == 0
    assert hashhop_errors.classify(" zzzzzz", "bbbbbb", links)["kind"] == "no_link"


def test_analyse_regenerates_the_runner_prompts():
    answer, links = _sample(0)
    other = next(t for t in links if t != answer)
    records = [_record(0, " " + answer), _record(0, " " + answer[:-1] + ("x" if answer[-1] != "x" else "y")),
               _record(0, " " + other)]
    result = hashhop_errors.analyse(records)
    assert result["outcomes"]["600"] == {"correct": 1, "queried_misspelt": 1, "other_link": 1}
    wrong = result["first_wrong_char"]["600"]  # the misspelt answer's last character; the other link's first
    assert sum(wrong.values()) == 2 and wrong[5] >= 1
    rank = str(len(links) - 1 - links.index(answer))
    assert result["accuracy_by_rank"]["600"][rank]["n"] == 3


def test_analyse_needs_distractor_links():
    with pytest.raises(ValueError, match="n_pairs >= 1"):
        hashhop_errors.analyse([_record(0, " x", params={"hops": 1, "intro": False, "n_pairs": 0})])
