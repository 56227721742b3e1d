"""What a benchmark suite is: a grid of cells, how one sample of a cell is measured, and how the results are laid out.

A *cell* is one point of the grid (a data_gen task, a length in the model's tokens, the task's
parameters) evaluated on `samples` samples. A suite turns its options (lengths, depths, tasks,
hops, ...) into cells, measures one sample of a cell (a generation suite: stream the prompt, decode
greedily, score the answer), summarises the records into a table (row x length), writes its reports and
lays out the comparison of several models. `benchmarks.runner.run_suite` owns the loop around these
hooks (resume, the samples JSONL, progress, W&B) for every suite, `ppl` included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import reports, scoring
from benchmarks.inference import greedy_answer
from benchmarks.records import fingerprint
from titans.io import write_text


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
    """A generation benchmark (and, through its methods, the hooks every suite gives the runner).

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
        comparison_metric, comparison_ylim: what a comparison of models shows (`comparison_row`) and its
            y range (None: free).
        aggregate: (predictions, references) of a cell's samples -> the cell's score in percent, the
            published metric itself (RULER: `scoring.string_match_all`); None: the mean of `score` x100.
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
    comparison_metric: str = "mean score (%)"
    comparison_ylim: tuple[float, float] | None = (0, 100)
    aggregate: Callable[[list[str], list], float] | None = None

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

    # ---------------------------------------------------------------- the runner's hooks

    def prepare(self, tokenizer, cells: Sequence[Cell], opts: Mapping[str, Any], seed: int, todo: Sequence) -> Any:
        """What measuring needs, made once per run (here: the token counter); also checks one sample of the
        shortest length of each (task, params), so bad input fails before any compute."""
        from data_gen.common import Counter

        counter = Counter(tokenizer)
        _preflight(cells, counter, seed)
        return counter

    def fingerprint(self, model_name: str, weights: str, seed: int, segment_len: int, max_new_tokens: int | None,
                    opts: Mapping[str, Any]) -> dict:
        """The settings a record is made with (resume reuses only records with the same fingerprint)."""
        return fingerprint(model_name, seed, segment_len, max_new_tokens, self.stop, weights)

    def record_key(self, record: Mapping[str, Any]) -> tuple[str, int]:
        """(cell key, sample index) of a finished record."""
        return record["cell"], record["index"]

    def measure(self, model, tokenizer, cell: Cell, index: int, ctx: Any, *, seed: int, segment_len: int,
                max_new_tokens: int | None) -> dict:
        """Sample `index` of `cell` (data_gen's eval split), streamed and greedily answered; its record."""
        import data_gen

        sample = next(data_gen.iter_samples(cell.task, 1, cell.length, seed, ctx, split="eval", start=index,
                                            **cell.param_dict))
        ids = tokenizer(sample["input"], add_special_tokens=False)["input_ids"]
        budget = max_new_tokens or max(1, int(sample["meta"].get("answer_budget") or 32))
        t0 = time.perf_counter()
        gen = greedy_answer(model, tokenizer, ids, segment_len=segment_len, max_new_tokens=budget, stop=self.stop)
        score = float(self.score(gen.text, sample))
        return {"suite": self.name, "cell": cell.key, "index": index, "task": cell.task, "row": cell.row,
                "length": cell.length, **dict(cell.coords), "input_tokens": len(ids),
                "depths": [nd.get("depth") for nd in sample["meta"].get("needles", [])],
                "prediction": gen.text, "answer": sample["answer"], "score": score,
                "empty": not scoring.postprocess_pred(gen.text), "stopped_by": gen.stopped_by,
                "new_tokens": len(gen.token_ids), "seconds": round(time.perf_counter() - t0, 4)}

    def progress_postfix(self, record: Mapping[str, Any]) -> dict:
        return {"length": record["length"], "score": f"{record['score']:.2f}"}

    def summarize(self, cells: Sequence[Cell], records: Sequence[dict], opts: Mapping[str, Any]) -> dict:
        """Per-cell scores (x100), empty-prediction counts, the row x length table and (RULER) the
        per-length average and effective length, from finished sample records."""
        by_cell: dict[str, list[dict]] = {}
        for r in records:
            by_cell.setdefault(r["cell"], []).append(r)
        rows_out, table = [], {}
        for c in cells:
            recs = by_cell.get(c.key, [])
            if not recs:
                score = None
            elif self.aggregate is not None:  # the published metric on the cell's predictions (RULER)
                score = self.aggregate([scoring.postprocess_pred(r["prediction"]) for r in recs],
                                       [r["answer"] for r in recs])
            else:
                score = round(100 * sum(r["score"] for r in recs) / len(recs), 2)
            rows_out.append({"task": c.task, "row": c.row, "length": c.length, **dict(c.coords), "score": score,
                             "n": len(recs), "empty": sum(r["empty"] for r in recs),
                             "input_tokens": round(sum(r["input_tokens"] for r in recs) / len(recs), 1) if recs
                             else None,
                             "seconds": round(sum(r["seconds"] for r in recs), 3)})
            table.setdefault(c.row, {})[c.length] = score
        lengths = list(opts["lengths"])
        summary: dict[str, Any] = {"suite": self.name, "metric": self.metric, "row_name": self.row_name,
                                   "lengths": lengths, "samples": opts["samples"], "table": table, "cells": rows_out,
                                   "empty_by_length": {n: sum(r["empty"] for r in rows_out if r["length"] == n)
                                                       for n in lengths}}
        if self.average_row:
            avg = {}
            for n in lengths:
                vals = [vals[n] for vals in table.values() if vals.get(n) is not None]
                avg[n] = round(sum(vals) / len(vals), 2) if vals and len(vals) == len(table) else None
            summary["average"] = avg
            table["average"] = avg
        if self.effective_length:
            threshold = float(opts.get("threshold", 85.6))
            done = {n: v for n, v in summary.get("average", {}).items() if v is not None}
            summary["threshold"] = threshold
            summary["effective_length"] = scoring.effective_length(done, threshold) if done else None
        return summary

    def write_reports(self, summary: dict, output_dir: Path, title: str) -> list[Path]:
        """summary.csv, results.md and the suite's PNG plot(s); returns the PNG paths (the runner writes
        summary.json)."""
        reports.csv_rows(output_dir / "summary.csv", summary["cells"])
        lengths, table = summary["lengths"], summary["table"]
        md = [f"# {title}\n", f"{self.description}. Metric: {self.metric}; {summary['samples']} sample(s) per cell.\n",
              reports.markdown_table(table, lengths, self.row_name)]
        if self.wide_table:
            md.append("\nThe same, one row per model (the Titans paper's Table 2 layout):\n")
            md.append(reports.wide_markdown_table({summary.get("model", "model"): table}, lengths))
        if "effective_length" in summary:
            eff = summary["effective_length"]
            md.append(f"\nEffective length (average >= {summary['threshold']}): "
                      f"{reports.fmt_length(eff) if eff else 'below the shortest length'}\n")
        if any(summary["empty_by_length"].values()):
            md.append("\nEmpty predictions by length: " + ", ".join(
                f"{reports.fmt_length(n)}: {k}" for n, k in summary["empty_by_length"].items()) + "\n")
        write_text(output_dir / "results.md", "\n".join(md))
        png = output_dir / f"{self.name}.png"
        if self.layout == "heatmap":
            return [reports.heatmap(table, lengths, png, title=title, row_name=self.row_name, metric=self.metric)]
        return [reports.lines(table, lengths, png, title=title, metric=self.metric)]

    # ---------------------------------------------------------------- comparing models

    def comparison_row(self, summary: Mapping[str, Any]) -> dict[int, float | None]:
        """One model's row in a comparison: the mean of the suite's table rows at each length (RULER: its
        average row)."""
        rows = summary["table"].get("average") and {"average": summary["table"]["average"]} or summary["table"]
        row = {}
        for n in summary["lengths"]:
            vals = [r[n] for r in rows.values() if r.get(n) is not None]
            row[int(n)] = round(sum(vals) / len(vals), 2) if vals else None
        return row

    def write_comparison(self, results: Mapping[str, Mapping[str, Any]], out: Path) -> dict:
        """comparison.md / .png: one row per model (`comparison_row`); with `wide_table` also table2.md (the
        Titans paper's Table 2: one row per model, a column per (row, length)). Returns the table."""
        lengths = sorted({int(n) for s in results.values() for n in s["lengths"]})
        table = {name: self.comparison_row(s) for name, s in results.items()}
        if self.wide_table:
            wide = {name: {r: {int(n): v for n, v in vals.items()} for r, vals in s["table"].items()}
                    for name, s in results.items()}
            write_text(out / "table2.md", f"# {self.name}: models compared (Titans Table 2 layout)\n\n"
                       + reports.wide_markdown_table(wide, lengths))
        metric = self.comparison_metric
        write_text(out / "comparison.md", f"# {self.name}: models compared ({metric})\n\n"
                   + reports.markdown_table(table, lengths, "model", digits=2))
        reports.lines(table, lengths, out / "comparison.png", title=f"{self.name}: models compared", metric=metric,
                      ylim=self.comparison_ylim)
        return table



def substring_score(prediction: str, sample: dict) -> float:
    """RULER's `all` rule on one sample: fraction of the answer(s) found in the prediction."""
    return scoring.match_fraction(scoring.postprocess_pred(prediction), sample["answer"])


def named_rows(rows, task_params, default_row: str, forbidden: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """(row name, data_gen params) of a suite's `rows` option: a mapping row name -> params laid over
    `task_params` (e.g. {"passkey": {}, "passkey_essay": {"haystack": "essay"}}), one table row each; None ->
    one row `default_row` with `task_params`. Params in `forbidden` belong to other options (e.g. hops)."""
    base = dict(task_params or {})
    if rows is None:
        return [(default_row, base)]
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError(f"benchmark.rows={rows!r} is not allowed; give a mapping row name -> data_gen params, e.g. "
                         f"{{{default_row}: {{}}, {default_row}_essay: {{haystack: essay}}}}, or null")
    out = []
    for name, params in rows.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"benchmark.rows: row name {name!r} is not allowed; give a non-empty string")
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"benchmark.rows.{name}={params!r} is not allowed; give a mapping of data_gen params")
        bad = sorted(set(params or {}) & set(forbidden))
        if bad:
            raise ValueError(f"benchmark.rows.{name} sets {bad}, which the suite's own option(s) of that name set; "
                             f"use benchmark.{bad[0]}")
        out.append((name, {**base, **dict(params or {})}))
    return out


def check_choices(name: str, values: Sequence, allowed: Sequence) -> list:
    """`values` as a list, each checked against `allowed` (ValueError naming the bad one)."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"benchmark.{name}={values!r} is not allowed; give a non-empty list from {list(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"benchmark.{name} has unknown value(s) {bad}; allowed: {list(allowed)}")
    return list(values)



def _preflight(cells: Sequence[Cell], counter, seed: int) -> None:
    """Generate one sample of the shortest length of each (task, params), with the widest variation of any range
    parameter (e.g. the most distractor pairs), so bad input fails before any compute."""
    import data_gen
    from data_gen.common import widest_params

    shortest: dict[str, Cell] = {}
    for c in cells:
        k = json.dumps([c.task, c.param_dict], sort_keys=True)  # params may hold lists (ranges): not hashable
        if k not in shortest or c.length < shortest[k].length:
            shortest[k] = c
    for c in shortest.values():
        try:
            next(data_gen.iter_samples(c.task, 1, c.length, seed, counter, split="eval", **widest_params(c.param_dict)))
        except ValueError as e:
            raise ValueError(f"benchmark cell task={c.task!r} length={c.length} params={c.param_dict}: {e}") from e
        except RuntimeError as e:  # data_gen could not build a valid sample (typically: the length is too small)
            raise ValueError(f"benchmark cell task={c.task!r} length={c.length} params={c.param_dict}: data_gen could "
                             f"not build a valid sample ({e}); raise benchmark.lengths or drop this task") from e
