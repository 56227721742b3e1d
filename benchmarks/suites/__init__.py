"""The benchmark suites by name: the generation suites and `ppl` (a `Suite` that measures per-token loss)."""

from __future__ import annotations

from benchmarks.suites import babilong, dependency, hashhop, niah, passkey, ppl, ruler, sniah
from benchmarks.suites.base import Cell, Suite

SUITES: dict[str, Suite] = {m.SUITE.name: m.SUITE for m in (niah, ruler, sniah, babilong, passkey, hashhop, dependency,
                                                           ppl)}
SUITE_NAMES = tuple(SUITES)


def get_suite(name: str) -> Suite:
    """The suite `name`; ValueError listing the allowed names otherwise."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark {name!r}; allowed: {list(SUITE_NAMES)} "
                         f"(pick one with benchmark=<name>)")
    return SUITES[name]


__all__ = ["Cell", "SUITES", "SUITE_NAMES", "Suite", "get_suite"]
