"""`sniah`: the Titans paper's Table 2 layout (S-NIAH-PK / -N / -W at 2K, 4K, 8K, 16K).

Titans (arXiv 2501.00663, Table 2) reports RULER's single-needle tasks:
    PK  (S-NIAH-1, pass-key retrieval)      -> RULER niah_single_1: word key, 7-digit number, noise haystack
    N   (S-NIAH-2, number in a haystack)    -> RULER niah_single_2: word key, 7-digit number, essay haystack
    W   (S-NIAH-3, word/uuid in a haystack) -> RULER niah_single_3: word key, uuid value, essay haystack
(RULER's S-NIAH-3 value is a uuid; the paper's "W" column is that task.) Scoring: string_match_all.
"""

from __future__ import annotations

from benchmarks.suites.base import Cell, Suite, check_choices, substring_score

SNIAH_TASKS = {"PK": "niah_single_1", "N": "niah_single_2", "W": "niah_single_3"}


def make_cells(o: dict) -> list[Cell]:
    columns = check_choices("columns", o["columns"], list(SNIAH_TASKS))
    return [Cell(SNIAH_TASKS[c], length, row=c, coords=(("column", c),)) for length in o["lengths"] for c in columns]


SUITE = Suite(
    name="sniah",
    description="Titans Table 2: S-NIAH PK/N/W (RULER niah_single_1/2/3) at 2K-16K",
    defaults=dict(lengths=[2048, 4096, 8192, 16384], samples=10, columns=list(SNIAH_TASKS)),
    make_cells=make_cells,
    score=substring_score,
    layout="heatmap",
    row_name="S-NIAH",
    metric="string_match_all (%)",
    wide_table=True,
)
