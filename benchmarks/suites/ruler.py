"""`ruler`: the 11 offline RULER tasks (NVIDIA/RULER, arXiv 2404.06654) at a list of lengths.

Tasks: niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, niah_multiquery (retrieval),
vt (multi-hop tracing), cwe, fwe (aggregation); RULER's qa_1/qa_2 need SQuAD/HotpotQA and are left
out. Every task is scored with RULER's `string_match_all` (its rule for all 11). The summary holds
the per-length average over tasks, the empty-prediction counts and the effective length (the
largest length up to which the average stays >= `threshold`, RULER's 85.6 by default).
"""

from __future__ import annotations

from benchmarks import scoring
from benchmarks.suites.base import Cell, Suite, check_choices, substring_score

RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")


def make_cells(o: dict) -> list[Cell]:
    tasks = check_choices("tasks", o["tasks"], RULER_TASKS)
    return [Cell(t, length, row=t) for length in o["lengths"] for t in tasks]


SUITE = Suite(
    name="ruler",
    description="RULER's 11 offline tasks, string_match_all, per-length average and effective length",
    defaults=dict(lengths=[4096, 8192, 16384], samples=10, tasks=list(RULER_TASKS), threshold=85.6),
    make_cells=make_cells,
    score=substring_score,
    layout="heatmap",
    row_name="task",
    metric="string_match_all (%)",
    average_row=True,
    effective_length=True,
    aggregate=scoring.string_match_all,  # each cell's number is RULER's metric applied to its predictions
)
