"""The benchmark suites by name. Generation suites are `Suite`s; `ppl` is a perplexity sweep."""

from __future__ import annotations

from benchmarks.suites import babilong, dependency, hashhop, niah, passkey, ruler, sniah
from benchmarks.suites.base import Cell, Suite

SUITES: dict[str, Suite] = {m.SUITE.name: m.SUITE for m in (niah, ruler, sniah, babilong, passkey, hashhop, dependency)}
SUITE_NAMES = (*SUITES, "ppl")


def get_suite(name: str) -> Suite:
    """The generation suite `name`; ValueError listing the allowed names otherwise ("ppl" has its own runner)."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {list(SUITE_NAMES)} "
                         f"(pick one with benchmark=<name>)")
    return SUITES[name]


__all__ = ["Cell", "SUITES", "SUITE_NAMES", "Suite", "get_suite"]
