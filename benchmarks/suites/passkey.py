"""`passkey`: pass-key retrieval (Landmark / LongLoRA format) accuracy by length, substring scoring."""

from __future__ import annotations

from benchmarks.suites.base import Cell, Suite, substring_score


def make_cells(o: dict) -> list[Cell]:
    params = tuple(sorted((o["task_params"] or {}).items()))
    return [Cell("passkey", length, params, row="passkey") for length in o["lengths"]]


SUITE = Suite(
    name="passkey",
    description="pass-key retrieval accuracy by length",
    defaults=dict(lengths=[1024, 2048, 4096], samples=20, task_params={}),
    make_cells=make_cells,
    score=substring_score,
)
