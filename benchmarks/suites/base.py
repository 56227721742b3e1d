"""What a benchmark suite is: a grid of cells, a scoring rule, and how its table is laid out.

A *cell* is one point of the grid (a data_gen task, a length in the model's tokens, the task's
parameters) evaluated on `samples` samples. A suite turns its options (lengths, depths, tasks,
hops, ...) into cells, scores one prediction against one sample, and names each cell's row and
column in the summary table (e.g. row = needle depth, column = length for the NIAH heatmap).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import scoring


@dataclass(frozen=True)
class Cell:
    """One grid point: `samples` samples of `task` at `length` tokens with data_gen `params`.

    `row` places it in the suite's table (the column is the length); `coords` are extra columns of the per-sample JSONL
    (depth, hops, label, ...).
    """

    task: str
    length: int
    params: tuple[tuple[str, Any], ...] = ()
    row: str = ""
    coords: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Stable identity of the cell (resume matches finished samples on it)."""
        return json.dumps({"task": self.task, "length": self.length, "params": dict(self.params)}, sort_keys=True)

    @property
    def param_dict(self) -> dict:
        return dict(self.params)


@dataclass
class Suite:
    """A generation benchmark.

    Attributes:
        name: the `benchmark=` name.
        description: one line for docs and reports.
        defaults: options and their defaults (`lengths`, `samples`, and suite-specific ones).
        make_cells: options -> cells.
        score: (prediction, sample) -> score in [0, 1].
        layout: "heatmap" (rows x lengths, e.g. depth x length) or "lines" (one curve per row over length).
        row_name: what a row is ("depth", "task", "hops", ...), for tables and axes.
        metric: the name of the score in reports.
        stop: strings that end an answer (the answer is cut before them).
        average_row: add a row averaging all rows per length (RULER's per-length summary).
        effective_length: report RULER's effective length from the average row.
        wide_table: also write the table as one row per model, a column per (row, length) — the
            Titans paper's Table 2 layout.
    """

    name: str
    description: str
    defaults: dict
    make_cells: Callable[[dict], list[Cell]]
    score: Callable[[str, dict], float]
    layout: str = "lines"
    row_name: str = "task"
    metric: str = "accuracy (%)"
    stop: tuple[str, ...] = ("\n",)
    average_row: bool = False
    effective_length: bool = False
    wide_table: bool = False  # also write one row per model with a column per (row, length) (Titans Table 2)
    extra_options: dict = field(default_factory=dict)

    def options(self, overrides: Mapping[str, Any]) -> dict:
        """The suite's defaults updated with `overrides`; unknown names and bad values are ValueErrors."""
        unknown = sorted(k for k, v in overrides.items() if k not in self.defaults and v is not None)
        if unknown:
            raise ValueError(f"benchmark {self.name!r} has no option(s) {unknown}; allowed: {sorted(self.defaults)}")
        opts = dict(self.defaults)
        opts.update({k: v for k, v in overrides.items() if v is not None})
        lengths = opts.get("lengths")
        if not isinstance(lengths, Sequence) or isinstance(lengths, str) or not lengths or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths):
            raise ValueError(f"benchmark.lengths={lengths!r} is not allowed; give a non-empty list of positive ints "
                             f"(tokens of the model's tokenizer), e.g. [1024, 2048]")
        samples = opts.get("samples")
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"benchmark.samples={samples!r} is not allowed; it must be an int >= 1 (samples per cell)")
        opts["lengths"] = sorted({int(n) for n in lengths})
        return opts


def substring_score(prediction: str, sample: dict) -> float:
    """RULER's `all` rule on one sample: fraction of the answer(s) found in the prediction."""
    return scoring.match_fraction(scoring.postprocess_pred(prediction), sample["answer"])


def check_choices(name: str, values: Sequence, allowed: Sequence) -> list:
    """`values` as a list, each checked against `allowed` (ValueError naming the bad one)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"benchmark.{name}={values!r} is not allowed; give a non-empty list from {list(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"benchmark.{name} has unknown value(s) {bad}; allowed: {list(allowed)}")
    return list(values)

