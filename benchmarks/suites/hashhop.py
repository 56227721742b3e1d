"""`hashhop`: access-token lookups (single or k-hop chains) in a haystack, accuracy by length and hops.

Options: `hops` (a row per hop count), `task_params` (data_gen hashhop params for every row) and `rows`,
a mapping row name -> params laid over them, one table row per variation (times each hop count), e.g.
{hashhop: {}, hashhop_pairs8: {n_pairs: 8}, hashhop_essay: {haystack: essay}}.
"""

from __future__ import annotations

from benchmarks.suites.base import Cell, Suite, named_rows, substring_score


def make_cells(o: dict) -> list[Cell]:
    hops = o["hops"]
    if not hops or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hops):
        raise ValueError(f"benchmark.hops={hops!r} is not allowed; give a list of ints >= 1")
    hops = sorted(set(hops))
    if o["rows"] is None:
        variations = [("", dict(o["task_params"] or {}))]
    else:
        variations = named_rows(o["rows"], o["task_params"], "hashhop", forbidden=("hops",))

    def row(name: str, h: int) -> str:
        if not name:
            return f"{h}-hop"
        return name if len(hops) == 1 else f"{name} {h}-hop"

    return [Cell("hashhop", length, tuple(sorted(dict(params, hops=h).items())), row=row(name, h),
                 coords=(("hops", h),))
            for name, params in variations for length in o["lengths"] for h in hops]


SUITE = Suite(
    name="hashhop",
    description="hash-hop accuracy by length and hops",
    defaults=dict(lengths=[1024, 2048, 4096], samples=20, hops=[1], task_params={}, rows=None),
    make_cells=make_cells,
    score=substring_score,
    row_name="hops",
)
