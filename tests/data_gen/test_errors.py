"""Bad input: a ValueError naming the thing, the value and what is allowed."""

import pytest

import data_gen


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(task="nope"), r"unknown task 'nope'; allowed: \["),
        (dict(task="passkey", colour="red"), r"unknown parameter\(s\) \['colour'\].*allowed"),
        (dict(task="passkey", haystack="sand"), r"haystack='sand' is not allowed; allowed"),
        (dict(task="passkey", length=40), r"length too small for passkey"),
        (dict(task="hashhop", hops=0), r"hops=0 is not allowed"),
        (dict(task="mqar", length=10, num_kv_pairs=8), r"length too small for mqar"),
        (dict(task="passkey", split="test"), r"split='test' is not allowed; allowed"),
    ],
    ids=["task", "param", "choice", "short", "range", "mqar-short", "split"],
)
def test_generate_errors(kwargs, match):
    kwargs = dict(dict(n=1, length=512, seed=0), **kwargs)
    with pytest.raises(ValueError, match=match):
        data_gen.generate(**kwargs)
