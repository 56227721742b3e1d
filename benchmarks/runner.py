"""Run a benchmark suite on a model: the one loop every suite goes through (resume, samples JSONL, progress,
summary, reports, W&B); the suite measures each sample (`benchmarks.suites.base.Suite`).

    from benchmarks.runner import run_suite
    summary = run_suite(model, tokenizer, "passkey", lengths=[1024, 2048], samples=20,
                        output_dir="results/passkey", segment_len=256)
    summary["table"]["passkey"][2048]   # accuracy (%) at 2048 tokens

Samples come from `data_gen` with `split="eval"` (a seed namespace disjoint from training), sized in
the model's own tokens. Each finished sample is appended to `samples.jsonl` and flushed at once, so
an interrupted run loses at most the sample in flight; a rerun into the same folder reads the JSONL
back and skips every (cell, sample) already done with the same settings (model name, weights, seed,
segment_len, max_new_tokens, stop strings: `benchmarks.records`). Summary (written once), tables and plots
are rewritten at the end of every run from all finished samples. A torn last line (a run killed mid-write)
is cut off before appending (`records.repair_torn_tail`), so its sample is recomputed and no record is
glued onto it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from benchmarks import reports
from benchmarks.records import SAMPLES_FILE, read_records, repair_torn_tail, weights_fingerprint
from benchmarks.suites import get_suite
from titans.io import write_json

log = logging.getLogger(__name__)


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
    spec = get_suite(suite)  # unknown name: ValueError listing the allowed ones
    opts = spec.options({"lengths": lengths, "samples": samples, **options})
    cells = spec.make_cells(opts)
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is not allowed; an int >= 1 or None (the task's own)")

    from tqdm.auto import tqdm

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = spec.fingerprint(model_name, weights_fingerprint(model), seed, segment_len, max_new_tokens, opts)
    path = out / SAMPLES_FILE
    repair_torn_tail(path)  # a line torn by a killed run would swallow the next record
    records = [r for r in read_records(path, fp) if r.get("suite") == spec.name]
    done = {spec.record_key(r) for r in records}
    n = opts["samples"]
    todo = [(c, i) for c in cells for i in range(n) if (c.key, i) not in done]
    ctx = spec.prepare(tokenizer, cells, opts, seed, todo)
    skipped = len(cells) * n - len(todo)
    if skipped:
        log.info("%s: %d finished sample(s) found in %s, %d to run", suite, skipped, path, len(todo))
    bar = tqdm(total=len(cells) * n, initial=skipped, desc=f"{suite} [{model_name}]", disable=not progress,
               unit="sample")
    with path.open("a", encoding="utf-8") as f:
        for cell, i in todo:
            rec = spec.measure(model, tokenizer, cell, i, ctx, seed=seed, segment_len=segment_len,
                               max_new_tokens=max_new_tokens)
            rec["fingerprint"] = fp
            f.write(json.dumps(rec) + "\n")
            f.flush()
            records.append(rec)
            bar.update(1)
            bar.set_postfix(**spec.progress_postfix(rec))
    bar.close()
    # one record per (cell, sample) of this grid: a rerun with fewer samples or a duplicate line changes nothing
    unique = {spec.record_key(r): r for r in records if r["index"] < n}
    summary = spec.summarize(cells, list(unique.values()), opts)
    summary.update(model=model_name, seed=seed, segment_len=segment_len)
    title = f"{suite} — {model_name}"
    images = spec.write_reports(summary, out, title)
    write_json(out / "summary.json", summary)
    reports.log_wandb(wandb_run, summary, images, prefix=f"{model_name}/{suite}")
    return summary
