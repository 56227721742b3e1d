"""`passkey`: pass-key retrieval (Landmark / LongLoRA format) accuracy by length, substring scoring.

Options: `task_params` (data_gen passkey params for every row) and `rows`, a mapping row name -> params
laid over them, one table row per variation, e.g. {passkey: {}, passkey_essay: {haystack: essay}}.
"""

from __future__ import annotations

from benchmarks.suites.base import Cell, Suite, named_rows, substring_score


def make_cells(o: dict) -> list[Cell]:
    rows = named_rows(o["rows"], o["task_params"], "passkey")
    return [Cell("passkey", length, tuple(sorted(params.items())), row=name)
            for name, params in rows for length in o["lengths"]]


SUITE = Suite(
    name="passkey",
    description="pass-key retrieval accuracy by length",
    defaults=dict(lengths=[1024, 2048, 4096], samples=20, task_params={}, rows=None),
    make_cells=make_cells,
    score=substring_score,
)
