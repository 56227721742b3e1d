"""Run a benchmark suite on a model: generate samples, stream + greedy-decode, score, write reports.

    from benchmarks.runner import run_suite
    summary = run_suite(model, tokenizer, "passkey", lengths=[1024, 2048], samples=20,
                        output_dir="results/passkey", segment_len=256)
    summary["table"]["passkey"][2048]   # accuracy (%) at 2048 tokens

Samples come from `data_gen` with `split="eval"` (a seed namespace disjoint from training), sized in
the model's own tokens. Each finished sample is appended to `samples.jsonl` and flushed at once, so
an interrupted run loses at most the sample in flight; a rerun into the same folder reads the JSONL
back and skips every (cell, sample) already done with the same settings (model name, seed,
segment_len, max_new_tokens, stop strings). Summary, tables and plots are rewritten at the end of
every run from all finished samples.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import reports, scoring
from benchmarks.inference import greedy_answer
from benchmarks.records import SAMPLES_FILE, fingerprint, read_records, weights_fingerprint
from benchmarks.suites import Cell, Suite, get_suite
from titans.io import write_json, write_text

log = logging.getLogger(__name__)

def _preflight(cells: Sequence[Cell], counter, seed: int) -> None:
    """Generate one sample of the shortest length of each (task, params) so bad input fails before any compute."""
    import data_gen

    shortest: dict[tuple, Cell] = {}
    for c in cells:
        k = (c.task, c.params)
        if k not in shortest or c.length < shortest[k].length:
            shortest[k] = c
    for c in shortest.values():
        try:
            next(data_gen.iter_samples(c.task, 1, c.length, seed, counter, split="eval", **c.param_dict))
        except ValueError as e:
            raise ValueError(f"benchmark cell task={c.task!r} length={c.length} params={c.param_dict}: {e}") from e
        except RuntimeError as e:  # data_gen could not build a valid sample (typically: the length is too small)
            raise ValueError(f"benchmark cell task={c.task!r} length={c.length} params={c.param_dict}: data_gen could "
                             f"not build a valid sample ({e}); raise benchmark.lengths or drop this task") from e


def summarize(suite: Suite, cells: Sequence[Cell], records: Sequence[dict], opts: Mapping[str, Any]) -> dict:
    """Per-cell scores (x100), empty-prediction counts, the row x length table and (RULER) the
    per-length average and effective length, from finished sample records."""
    by_cell: dict[str, list[dict]] = {}
    for r in records:
        by_cell.setdefault(r["cell"], []).append(r)
    rows_out, table = [], {}
    for c in cells:
        recs = by_cell.get(c.key, [])
        score = round(100 * sum(r["score"] for r in recs) / len(recs), 2) if recs else None
        rows_out.append({"task": c.task, "row": c.row, "length": c.length, **dict(c.coords), "score": score,
                         "n": len(recs), "empty": sum(r["empty"] for r in recs),
                         "input_tokens": round(sum(r["input_tokens"] for r in recs) / len(recs), 1) if recs else None,
                         "seconds": round(sum(r["seconds"] for r in recs), 3)})
        table.setdefault(c.row, {})[c.length] = score
    lengths = list(opts["lengths"])
    summary: dict[str, Any] = {"suite": suite.name, "metric": suite.metric, "row_name": suite.row_name,
                               "lengths": lengths, "samples": opts["samples"], "table": table, "cells": rows_out,
                               "empty_by_length": {n: sum(r["empty"] for r in rows_out if r["length"] == n)
                                                   for n in lengths}}
    if suite.average_row:
        avg = {}
        for n in lengths:
            vals = [vals[n] for vals in table.values() if vals.get(n) is not None]
            avg[n] = round(sum(vals) / len(vals), 2) if vals and len(vals) == len(table) else None
        summary["average"] = avg
        table["average"] = avg
    if suite.effective_length:
        threshold = float(opts.get("threshold", 85.6))
        done = {n: v for n, v in summary.get("average", {}).items() if v is not None}
        summary["threshold"] = threshold
        summary["effective_length"] = scoring.effective_length(done, threshold) if done else None
    return summary


def write_reports(suite: Suite, summary: dict, output_dir: Path, title: str) -> list[Path]:
    """summary.json, summary.csv, results.md and the suite's PNG plot(s); returns the PNG paths."""
    write_json(output_dir / "summary.json", summary)
    reports.csv_rows(output_dir / "summary.csv", summary["cells"])
    lengths, table = summary["lengths"], summary["table"]
    md = [f"# {title}\n", f"{suite.description}. Metric: {suite.metric}; {summary['samples']} sample(s) per cell.\n",
          reports.markdown_table(table, lengths, suite.row_name)]
    if suite.wide_table:
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
    png = output_dir / f"{suite.name}.png"
    if suite.layout == "heatmap":
        return [reports.heatmap(table, lengths, png, title=title, row_name=suite.row_name, metric=suite.metric)]
    return [reports.lines(table, lengths, png, title=title, metric=suite.metric)]


def run_suite(model, tokenizer, suite: str, *, output_dir: str | Path, lengths: Sequence[int] | None = None,
              samples: int | None = None, segment_len: int = 512, seed: int = 0, max_new_tokens: int | None = None,
              model_name: str = "model", progress: bool = True, wandb_run=None, **options) -> dict:
    """Evaluate `model` on a benchmark suite through streaming + greedy decoding; write and return the summary.

    Args:
        model: a causal LM (`model(input_ids [1, T], past_key_values=cache, use_cache=True)` -> logits
            [1, T, V]); a Titans-patched Qwen3 carries its memory in the cache.
        tokenizer: the model's tokenizer; lengths are counted in its tokens.
        suite: one of `benchmarks.suites.SUITE_NAMES` (niah, ruler, sniah, babilong, passkey, hashhop,
            dependency, ppl).
        output_dir: where samples.jsonl, summary.json/.csv, results.md and PNGs go.
        lengths, samples: the grid's lengths (tokens) and samples per cell; None = the suite's defaults.
        segment_len: tokens per forward call while streaming the context.
        seed: evaluation seed (data_gen's eval split).
        max_new_tokens: answer budget; None = the task's own (RULER's tokens_to_generate, else the
            gold completion's length).
        model_name: recorded with each sample; resume only reuses samples of the same name, weights (a hash of
            the parameters) and settings.
        wandb_run: a wandb run or Lightning WandbLogger to log the table and images to (None: no W&B).
        **options: suite options (depths, tasks, hops, columns, threshold, task_params, ...).
    Returns:
        the summary dict: `table` {row: {length: score}}, `cells` (per-cell score, n, empty, ...), and
        for RULER `average` and `effective_length`.
    """
    if suite == "ppl":
        from benchmarks.suites.ppl import run_ppl

        return run_ppl(model, tokenizer, output_dir=output_dir, lengths=lengths, samples=samples,
                       segment_len=segment_len, model_name=model_name, progress=progress, wandb_run=wandb_run,
                       **options)
    spec = get_suite(suite)  # unknown name: ValueError listing the allowed ones
    opts = spec.options({"lengths": lengths, "samples": samples, **options})
    cells = spec.make_cells(opts)
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is not allowed; an int >= 1 or None (the task's own)")

    from tqdm.auto import tqdm

    import data_gen
    from data_gen.common import Counter

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    counter = Counter(tokenizer)
    _preflight(cells, counter, seed)
    fp = fingerprint(model_name, seed, segment_len, max_new_tokens, spec.stop, weights_fingerprint(model))
    path = out / SAMPLES_FILE
    records = read_records(path, fp)
    done = {(r["cell"], r["index"]) for r in records}
    n = opts["samples"]
    todo = [(c, i) for c in cells for i in range(n) if (c.key, i) not in done]
    skipped = len(cells) * n - len(todo)
    if skipped:
        log.info("%s: %d finished sample(s) found in %s, %d to run", suite, skipped, path, len(todo))
    bar = tqdm(total=len(cells) * n, initial=skipped, desc=f"{suite} [{model_name}]", disable=not progress,
               unit="sample")
    with path.open("a", encoding="utf-8") as f:
        for cell, i in todo:
            sample = next(data_gen.iter_samples(cell.task, 1, cell.length, seed, counter, split="eval", start=i,
                                                **cell.param_dict))
            ids = tokenizer(sample["input"], add_special_tokens=False)["input_ids"]
            budget = max_new_tokens or max(1, int(sample["meta"].get("answer_budget") or 32))
            t0 = time.perf_counter()
            gen = greedy_answer(model, tokenizer, ids, segment_len=segment_len, max_new_tokens=budget, stop=spec.stop)
            score = float(spec.score(gen.text, sample))
            rec = {"suite": suite, "cell": cell.key, "index": i, "task": cell.task, "row": cell.row,
                   "length": cell.length, **dict(cell.coords), "input_tokens": len(ids),
                   "depths": [nd.get("depth") for nd in sample["meta"].get("needles", [])],
                   "prediction": gen.text, "answer": sample["answer"], "score": score,
                   "empty": not scoring.postprocess_pred(gen.text), "stopped_by": gen.stopped_by,
                   "new_tokens": len(gen.token_ids), "seconds": round(time.perf_counter() - t0, 4), "fingerprint": fp}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            records.append(rec)
            bar.update(1)
            bar.set_postfix(length=cell.length, score=f"{score:.2f}")
    bar.close()
    # one record per (cell, sample) of this grid: a rerun with fewer samples or a duplicate line changes nothing
    unique = {(r["cell"], r["index"]): r for r in records if r["index"] < n}
    summary = summarize(spec, cells, list(unique.values()), opts)
    summary.update(model=model_name, seed=seed, segment_len=segment_len)
    title = f"{suite} — {model_name}"
    images = write_reports(spec, summary, out, title)
    reports.log_wandb(wandb_run, summary, images, prefix=f"{model_name}/{suite}")
    return summary
