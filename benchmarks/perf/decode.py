"""Greedy decoding after a long context: MAG with and without its decode fast paths against full attention,
interleaved in one process per context length.

    python benchmarks/perf/decode.py [--lengths 1K 16K 64K 1M] [--decode-tokens 64] [--block 16]
                                     [--full-max-length 64K] [--out results/perf/decode.json]

Per context length, in a fresh process (one intra-op thread): the tiny random-init Qwen3
(`conf/model/qwen3_tiny.yaml`) with MAG (`conf/memory/mag.yaml`, window `--window`) and unpatched (full attention)
read the same random byte ids through `titans.streaming.stream` (segment `--segment-len`); then each decodes
`--decode-tokens` greedy tokens, one per forward call from its cache, the rows taking turns every `--block` tokens
(the order rotates every turn), so a load change on a shared machine hits every row alike. Blocks rather than
single tokens: a full-attention call at 64K streams ~64 MB of keys and evicts the caches the next row's call would
have found warm (token-by-token turns put ~0.4 ms on every MAG token at 64K). Reported per row: median, mean and
max ms per token (the mean includes the calls that write a memory chunk, one in `chunk_size`: 16 = one per block).

Rows:
- `mag`: the library as it is. A call whose tokens complete no memory chunk takes the memory's read-only path
  (`NeuralMemory._forward_read_only`: the queries of the new tokens and M(q), nothing of the unfinished chunk),
  and a one-token call attends without a mask (`titans.variants.common.MASK_FREE_DECODE`).
- `mag_general`: the same model and a copy of the same cache with both fast paths off
  (`titans.memory.neural_memory.READ_ONLY_PATH = False`, `MASK_FREE_DECODE = False`): every call recomputes the
  projections, conv and gates of the buffered tokens and builds the window mask. Its tokens must equal `mag`'s
  (`same_tokens` in the output).
- `full`: unpatched Qwen3, Hugging Face's `DynamicCache` (every key); only up to `--full-max-length` (its
  streaming is quadratic).

Target (issue 18): `mag` ≤ 2 ms/token at every length up to 1M.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import streaming  # noqa: E402  (build, make_ids, parse_length, label of the streaming benchmark)

from benchmarks.perf.machine import (  # noqa: E402
    add_malloc_argument,
    add_note_argument,
    apply_malloc,
    load_average,
    machine_info,
)
from titans.compat import cache_kwargs, output_cache  # noqa: E402
from titans.io import write_json  # noqa: E402

ROWS = ("mag", "mag_general", "full")
TARGET_MS = 2.0


def _fast_paths(on: bool) -> None:
    import titans.memory.neural_memory as neural_memory
    import titans.variants.common as common

    neural_memory.READ_ONLY_PATH = on
    common.MASK_FREE_DECODE = on


@torch.no_grad()
def warm_up(model, args: argparse.Namespace) -> None:
    """Streams a short context and decodes `--warmup-tokens` from it (both paths of MAG's memory), discarded: a fresh
    process runs its first ~0.3 s slower (code and allocator pages faulted in), which a 1K context's 64 decoded tokens
    (~0.1 s) would measure instead of the steady state."""
    for fast in (False, True):
        _fast_paths(fast)
        try:
            streaming.warm_up(model, streaming.make_ids(256, args.seed + 1), args.segment_len, args.warmup_tokens)
        finally:
            _fast_paths(True)


@torch.no_grad()
def run_length(length: int, args: argparse.Namespace) -> dict:
    """One context length in this process: stream, then decode every row interleaved."""
    from titans.streaming import stream

    torch.set_num_threads(args.threads)
    apply_malloc(args.malloc)
    rows = [r for r in args.rows if r != "full" or length <= args.full_max_length]
    ids = streaming.make_ids(length, args.seed)
    models, state, stream_s = {}, {}, {}
    if any(r.startswith("mag") for r in rows):
        models["mag"] = streaming.build("mag", args.window)
    if "full" in rows:
        models["full"] = streaming.build("full", args.window)
    for name, model in models.items():
        warm_up(model, args)
        start = time.perf_counter()
        cache, logits = stream(model, ids, args.segment_len, return_logits=True)
        stream_s[name] = time.perf_counter() - start
        state[name] = (cache, logits.argmax(-1, keepdim=True))
    if "mag_general" in rows:
        cache, token = state["mag"]
        state["mag_general"] = (copy.deepcopy(cache), token.clone())
    if "mag" not in rows:
        state.pop("mag", None)
    ms = {r: [] for r in rows}
    tokens = {r: [] for r in rows}
    try:
        for turn, first in enumerate(range(0, args.decode_tokens, args.block)):
            k = turn % len(rows)
            for r in rows[k:] + rows[:k]:
                model = models["full" if r == "full" else "mag"]
                _fast_paths(r != "mag_general")
                cache, token = state[r]
                for _ in range(min(args.block, args.decode_tokens - first)):
                    start = time.perf_counter()
                    out = model(token, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                    ms[r].append(1e3 * (time.perf_counter() - start))
                    cache = output_cache(out)
                    tokens[r].append(int(token))
                state[r] = (cache, token)
    finally:
        _fast_paths(True)
    res = {"length": length, "label": streaming.label(length), "stream_s": stream_s, "rows": {}}
    for r in rows:
        res["rows"][r] = {"median_ms": statistics.median(ms[r]), "mean_ms": statistics.fmean(ms[r]),
                          "max_ms": max(ms[r]), "ms": ms[r]}
    if "mag" in rows and "mag_general" in rows:
        res["same_tokens"] = tokens["mag"] == tokens["mag_general"]
    return res


def run_subprocess(length: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(length), "--rows", *args.rows,
           "--decode-tokens", str(args.decode_tokens), "--warmup-tokens", str(args.warmup_tokens),
           "--block", str(args.block),
           "--segment-len", str(args.segment_len), "--window", str(args.window),
           "--full-max-length", str(args.full_max_length), "--seed", str(args.seed), "--threads", str(args.threads),
           "--malloc", args.malloc]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=streaming.ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"length": length, "label": streaming.label(length), "status": "failed",
                "stderr_tail": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1])


def format_cell(res: dict) -> str:
    if "rows" not in res:
        return f"{res['label']:>5}  failed: {res.get('stderr_tail', '')[-300:]}"
    parts = [f"{res['label']:>5}"]
    for r in ROWS:
        c = res["rows"].get(r)
        parts.append(f"{c['median_ms']:>7.2f} {c['mean_ms']:>7.2f}" if c else f"{'-':>7} {'-':>7}")
    rows = res["rows"]
    ratio = rows["mag"]["median_ms"] / rows["full"]["median_ms"] if "mag" in rows and "full" in rows else None
    parts.append(f"{ratio:>10.2f}" if ratio else f"{'-':>10}")
    parts.append(f"{str(res.get('same_tokens', '-')):>6}")
    return " ".join(parts)


HEADER = (f"{'':>5} " + " ".join(f"{r:>15}" for r in ROWS) + f" {'mag/full':>10} {'same':>6}\n"
          + f"{'len':>5} " + " ".join(f"{'median':>7} {'mean':>7}" for _ in ROWS) + f" {'(median)':>10} {'tokens':>6}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", default=["1K", "16K", "64K", "1M"], help="context lengths, e.g. 1K")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"of {list(ROWS)}")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--warmup-tokens", type=int, default=32,
                        help="tokens decoded (and discarded) after a short warm-up context, per model, first")
    parser.add_argument("--block", type=int, default=16, help="tokens a row decodes before the next row's turn")
    parser.add_argument("--segment-len", type=int, default=2048, help="tokens per forward call of the context")
    parser.add_argument("--window", type=int, default=64, help="MAG attention window")
    parser.add_argument("--full-max-length", default="64K", help="full attention only up to this context length")
    add_note_argument(parser)
    add_malloc_argument(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/perf/decode.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.lengths = sorted({streaming.parse_length(x) for x in args.lengths})
    args.full_max_length = streaming.parse_length(args.full_max_length)
    bad = [r for r in args.rows if r not in ROWS]
    if bad:
        raise ValueError(f"--rows {bad}: allowed {list(ROWS)}")
    if args.warmup_tokens < 0:
        raise ValueError(f"--warmup-tokens {args.warmup_tokens}: allowed an int >= 0")
    for flag, value in (("--decode-tokens", args.decode_tokens), ("--block", args.block),
                        ("--segment-len", args.segment_len),
                        ("--window", args.window), ("--threads", args.threads)):
        if value <= 0:
            raise ValueError(f"{flag} {value}: allowed an int > 0")
    return args


def main(argv: list[str] | None = None, in_process: bool = False) -> dict:
    args = parse_args(argv)
    load_at_start = load_average()
    if args.worker:
        print(json.dumps(run_length(streaming.parse_length(args.worker), args)), flush=True)
        return {}
    print(f"greedy decoding after the context, {args.decode_tokens} tokens per row, rows interleaved, "
          f"{args.threads} thread(s); ms/token\n")
    print(HEADER)
    cells = []
    for length in args.lengths:
        res = run_length(length, args) if in_process else run_subprocess(length, args)
        print(format_cell(res), flush=True)
        cells.append(res)
    ok = [c for c in cells if "mag" in c.get("rows", {})]
    summary = {}
    if ok:
        med = [c["rows"]["mag"]["median_ms"] for c in ok]
        summary = {"mag_median_ms_max": max(med), "target_ms": TARGET_MS, "target_met": max(med) <= TARGET_MS,
                   "mag_median_max_over_min": max(med) / min(med)}
        print(f"\nmag: median {min(med):.2f}-{max(med):.2f} ms/token over {[c['label'] for c in ok]} "
              f"(target <= {TARGET_MS} ms: {'met' if summary['target_met'] else 'NOT met'})")
    results = {
        "benchmark": "decode",
        "command": "python benchmarks/perf/decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(args.threads, args.note, load_at_start, malloc=apply_malloc(args.malloc)),
        "settings": {"model": "conf/model/qwen3_tiny.yaml (random init)", "window": args.window,
                     "segment_len": args.segment_len, "decode_tokens": args.decode_tokens, "rows": args.rows,
                     "full_max_length": args.full_max_length, "input": f"random byte ids, seed {args.seed}"},
        "cells": cells,
        "summary": summary,
    }
    write_json(Path(args.out), results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
