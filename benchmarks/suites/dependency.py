"""`dependency`: dependency tracing over 2-4 hops, accuracy by length and hops.

Yes/no answers are scored on the first word of the answer (a substring rule would credit "yes no");
other answers (who-questions) by substring.
"""

from __future__ import annotations

from benchmarks import scoring
from benchmarks.suites.base import Cell, Suite, substring_score


def score(prediction: str, sample: dict) -> float:
    answers = [sample["answer"]] if isinstance(sample["answer"], str) else list(sample["answer"])
    if all(a.lower() in ("yes", "no") for a in answers):
        return scoring.first_word_match(prediction, answers)
    return substring_score(prediction, sample)


def make_cells(o: dict) -> list[Cell]:
    hops = o["hops"]
    if not hops or not all(isinstance(h, int) and h >= 1 for h in hops):
        raise ValueError(f"benchmark.hops={hops!r} is not allowed; give a list of ints >= 1")
    base = dict(o["task_params"] or {})
    return [Cell("dependency", length, tuple(sorted(dict(base, hops=h).items())), row=f"{h}-hop",
                 coords=(("hops", h),)) for length in o["lengths"] for h in sorted(set(hops))]


SUITE = Suite(
    name="dependency",
    description="dependency trace accuracy by length and hops",
    defaults=dict(lengths=[1024, 2048, 4096], samples=20, hops=[2, 3, 4], task_params={}),
    make_cells=make_cells,
    score=score,
    row_name="hops",
)
