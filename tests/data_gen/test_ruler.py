"""RULER family: exact templates, every variant on several seeds, answers recoverable and unleaked."""

import pytest

import data_gen
from data_gen.common import Counter
from data_gen.registry import get_task
from data_gen.ruler_niah import VARIANTS
from data_gen.validate import validate

# RULER constants.py niah template + answer prefix after niah.py's singular rewrite (num_q * num_v == 1),
# written out literally.
NIAH_SINGLE_1 = (
    "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards.\n{context}\n"
    "What is the special magic number for {query} mentioned in the provided text? "
    "The special magic number for {query} mentioned in the provided text is"
)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def test_niah_single_1_template_exact():
    for s in data_gen.generate("niah_single_1", 5, 1024, seed=0):
        query = s["meta"]["queries"][0]
        head, tail = NIAH_SINGLE_1.format(context="\0", query=query).split("\0")
        assert s["input"].startswith(head) and s["input"].endswith(tail)
        context = s["input"][len(head):-len(tail)]
        lines = context.split("\n")
        needle = f"One of the special magic numbers for {query} is: {s['answer'][0]}."
        assert lines.count(needle) == 1
        assert all(line == NOISE for line in lines if line != needle)
        assert s["length"] + 128 <= 1024


@pytest.mark.parametrize("task", list(VARIANTS))
def test_niah_variants(task):
    counter = Counter(None)
    for s in data_gen.generate(task, 6, 1536, seed=1):
        assert validate(s, counter, None, get_task(s["task"]).check) == []
        for v in s["meta"]["values"]:
            assert s["input"].count(v) == 1
        q = s["meta"]["queries"]
        assert len(s["answer"]) == len(q) * (4 if task == "niah_multivalue" else 1)


@pytest.mark.parametrize("task,params", [("vt", {}), ("vt", dict(num_chains=2, num_hops=2)),
                                         ("cwe", dict(freq_cw=10, freq_ucw=2)), ("fwe", {})],
                         ids=["vt", "vt-2chains", "cwe-small", "fwe"])
def test_aggregation_tasks(task, params):
    counter = Counter(None)
    for s in data_gen.generate(task, 5, 2048, seed=2, **params):
        assert validate(s, counter, data_gen.resolve_params(task, params), get_task(task).check) == []
        assert s["input"].endswith({"vt": "they are: ", "cwe": "in the list are:",
                                    "fwe": "appeared words are:"}[task])


def test_ruler_length_too_small():
    with pytest.raises(ValueError, match="length too small for niah_single_2"):
        data_gen.generate("niah_single_2", 1, 200, seed=0)
