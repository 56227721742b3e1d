"""`hashhop`: access-token lookups (single or k-hop chains) in a haystack, accuracy by length and hops."""

from __future__ import annotations

from benchmarks.suites.base import Cell, Suite, substring_score


def make_cells(o: dict) -> list[Cell]:
    hops = o["hops"]
    if not hops or not all(isinstance(h, int) and h >= 1 for h in hops):
        raise ValueError(f"benchmark.hops={hops!r} is not allowed; give a list of ints >= 1")
    base = dict(o["task_params"] or {})
    return [Cell("hashhop", length, tuple(sorted(dict(base, hops=h).items())), row=f"{h}-hop", coords=(("hops", h),))
            for length in o["lengths"] for h in sorted(set(hops))]


SUITE = Suite(
    name="hashhop",
    description="hash-hop accuracy by length and hops",
    defaults=dict(lengths=[1024, 2048, 4096], samples=20, hops=[1], task_params={}),
    make_cells=make_cells,
    score=substring_score,
    row_name="hops",
)
