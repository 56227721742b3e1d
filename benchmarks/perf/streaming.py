"""Streaming cost by context length: the tiny MAG model against the full-attention model, up to 1M tokens.

    python benchmarks/perf/streaming.py [--lengths 1K 4K 16K 64K 256K 1M] [--segment-len 2048]
                                        [--budget-s 300] [--out results/perf/streaming.json]

What is measured, per (model, length) cell:

- **tokens/s** of `titans.streaming.stream(model, ids, segment_len)`: the context is fed `segment_len`
  tokens per forward call under `no_grad`, carrying the cache (MAG: the window's KV + the memory state,
  which keeps learning; full attention: Hugging Face's `DynamicCache`, every key). Wall-clock time of
  the whole call; short contexts are streamed again (fresh cache each time) until `--min-time-s` has
  passed and the median is reported. A short warm-up stream and a few decoded tokens run first, again until
  `--warmup-s` has passed (a fresh process's first ~0.3 s run slower: lazy initialisation, code and allocator
  pages faulted in; with one warm-up stream the 1K cell measured that: 14K tok/s and 3.4 ms/token against 21-24K
  and 1.5-1.8 ms warm, in the tenth session).
- **decode latency**: after the context, `--decode-tokens` greedy steps, one token per forward call from
  the cache; the median (and mean, max) ms per token. MAG's memory writes a chunk every `chunk_size`
  tokens, so a few steps are slower than the median.
- **peak RSS**: `ru_maxrss` of a fresh subprocess per cell (model build + stream + decode), next to
  the RSS after the model was built, so the growth with length is visible. `cache_mb` is the size of
  the tensors in the cache after the context.

Rows: `mag` and `full` are the library as it is. Two diagnostic MAG rows show where MAG's time goes at
long contexts (both found with this benchmark):
- `mag_ftz`: `torch.set_flush_denormal(True)` in the cell's process. After ~100K tokens parts of the
  memory state (weights/momentum, decayed by the forget gate) become subnormal floats, which the CPU
  handles ~10x slower; flushing them to zero removes that.
- `mag_ftz_nomask`: also passes `attention_mask={"full_attention": None, ...}` (Hugging Face's
  "prepared mask mapping") on every forward call, instead of calling `titans.streaming.stream`. Every
  layer is patched and the patched layers build their own window masks, but `Qwen3Model.forward` still
  builds a `[segment, tokens so far]` causal mask per call (the `TitansCache` reports its full length),
  which is O(L) per call and O(L²) per stream.

Input: random byte ids in [0, 256) (the tiny model's byte tokenizer), seeded with `--seed`; the models
are the random-init `conf/model/qwen3_tiny.yaml` (the speed does not depend on the weights), MAG from
`conf/memory/mag.yaml` with `--window`, full attention from `conf/memory/none.yaml` (unpatched Qwen3).

A cell is skipped, with the reason in the output, when its time extrapolated from the shorter lengths
of the same model (the local power law of the last two measured cells, exponent clamped to [1, 2])
exceeds `--budget-s`, or when it runs past `--timeout-factor` × `--budget-s`. Longer lengths of that model are
skipped after it. Every subprocess uses one intra-op thread (`torch.set_num_threads(1)`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch

from benchmarks.perf.machine import add_malloc_argument, add_note_argument, apply_malloc, load_average, machine_info
from titans.compat import cache_kwargs, output_cache
from titans.io import write_json

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONF = ROOT / "conf/model/qwen3_tiny.yaml"
MEMORY_CONFS = {"mag": ROOT / "conf/memory/mag.yaml", "full": ROOT / "conf/memory/none.yaml"}
# model key -> (memory config, flush denormals, pass a prepared empty mask mapping); see the module docstring
MODELS = {
    "mag": ("mag", False, False),
    "mag_ftz": ("mag", True, False),
    "mag_ftz_nomask": ("mag", True, True),
    "full": ("full", False, False),
}
EMPTY_MASKS = {"full_attention": None, "sliding_attention": None}
DEFAULT_LENGTHS = ["1K", "4K", "16K", "64K", "256K", "1M"]
SUFFIXES = {"K": 1024, "M": 1024 * 1024}
FLAT_TARGET = 1.2  # the target: MAG tokens/s flat within 1.2x from 1K to 1M


def parse_length(text: str) -> int:
    """'4096' | '4K' | '1M' -> tokens (K = 1024, M = 1024²)."""
    s = str(text).strip().upper()
    try:
        n = int(s[:-1]) * SUFFIXES[s[-1]] if s and s[-1] in SUFFIXES else int(s)
    except ValueError:
        n = -1
    if n <= 0:
        raise ValueError(f"--lengths {text!r}: allowed a positive int or an int with K/M (1K = 1024 tokens), e.g. 4K")
    return n


def label(n: int) -> str:
    for suffix, unit in (("M", SUFFIXES["M"]), ("K", SUFFIXES["K"])):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def build(model_name: str, window: int):
    """The tiny Qwen3 (`conf/model/qwen3_tiny.yaml`): 'mag*' patched with `window`, 'full' unpatched; eval mode."""
    from omegaconf import OmegaConf

    from titans.training.builders import build_model

    if model_name not in MODELS:
        raise ValueError(f"--models {model_name!r}: allowed {list(MODELS)}")
    conf = MODELS[model_name][0]
    memory_cfg = OmegaConf.load(MEMORY_CONFS[conf])
    if conf == "mag":
        memory_cfg.window = window
    model, _ = build_model(OmegaConf.load(MODEL_CONF), memory_cfg)
    return model.eval()


def make_ids(length: int, seed: int) -> torch.Tensor:
    """`[1, length]` random byte ids in [0, 256)."""
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))


def cache_bytes(cache) -> int:
    """Bytes of every tensor held by the cache's layers (KV, memory states, extras)."""
    seen: set[int] = set()

    def walk(obj, depth: int) -> int:
        if isinstance(obj, torch.Tensor):
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return obj.numel() * obj.element_size()
        if depth > 4:
            return 0
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v, depth + 1) for v in obj)
        if is_dataclass(obj):
            return sum(walk(getattr(obj, f.name), depth + 1) for f in fields(obj))
        return 0

    return sum(walk(vars(layer), 0) for layer in getattr(cache, "layers", []))


@torch.no_grad()
def warm_up(model, ids: torch.Tensor, segment_len: int, decode_tokens: int, **extra) -> None:
    """Streams `ids` and decodes `decode_tokens` greedily from the cache, discarded (the warm-up of `measure` and of
    decode.py). `extra`: keyword arguments of every forward call (`stream`'s too)."""
    from titans.streaming import stream

    cache, logits = stream(model, ids, segment_len, return_logits=True, **extra)
    token = logits.argmax(-1, keepdim=True)
    for _ in range(decode_tokens):
        out = model(token, **cache_kwargs(cache), use_cache=True, logits_to_keep=1, **extra)
        cache = output_cache(out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def measure(model, length: int, segment_len: int, decode_tokens: int, seed: int = 0, min_time_s: float = 0.0,
            max_repeats: int = 100, prepared_mask: bool = False, warmup_s: float = 0.0) -> dict:
    """Stream `length` random byte ids through `model`, then decode greedily; timings of both.

    Returns tokens/s (median over repeats of the whole stream), the decode ms/token (median, mean,
    max) and the cache size after the context. `prepared_mask`: pass an empty prepared mask on every call.
    """
    from titans.streaming import stream

    extra = {"attention_mask": EMPTY_MASKS} if prepared_mask else {}
    stream = functools.partial(stream, **extra)  # the mag_ftz_nomask row: an empty prepared mask on every call
    ids = make_ids(length, seed)
    # warm-up: a fresh process runs its first ~0.3 s slower (code and allocator pages faulted in), which a 1K stream
    # (~0.05 s) and its decoded tokens would measure instead of the steady state; so a short stream and a few
    # decoded tokens, again until `warmup_s` has passed
    warm_ids = make_ids(min(length, 2 * segment_len, 1024), seed + 1)
    warm_start = time.perf_counter()
    while True:
        warm_up(model, warm_ids, segment_len, min(decode_tokens, 16), **extra)
        if time.perf_counter() - warm_start >= warmup_s:
            break
    times: list[float] = []
    while True:
        start = time.perf_counter()
        cache, logits = stream(model, ids, segment_len, return_logits=True)
        times.append(time.perf_counter() - start)
        if sum(times) >= min_time_s or len(times) >= max_repeats:
            break
    token = logits.argmax(-1, keepdim=True)  # [1, 1]
    step_ms: list[float] = []
    for _ in range(decode_tokens):
        start = time.perf_counter()
        out = model(token, **cache_kwargs(cache), use_cache=True, logits_to_keep=1, **extra)
        cache = output_cache(out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        step_ms.append(1e3 * (time.perf_counter() - start))
    stream_s = statistics.median(times)
    return {
        "stream_s": stream_s, "stream_s_all": times, "tokens_per_s": length / stream_s,
        "decode_ms_median": statistics.median(step_ms) if step_ms else None,
        "decode_ms_mean": statistics.fmean(step_ms) if step_ms else None,
        "decode_ms_max": max(step_ms) if step_ms else None,
        "cache_mb": cache_bytes(cache) / 2**20,
    }


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def run_cell_here(model_name: str, length: int, args: argparse.Namespace) -> dict:
    """One cell in this process (what each subprocess runs; tests call it directly)."""
    torch.set_num_threads(args.threads)
    apply_malloc(args.malloc)
    _, ftz, prepared_mask = MODELS[model_name]
    model = build(model_name, args.window)
    rss_built = rss_mb()
    torch.set_flush_denormal(ftz)  # process-global; back to torch's default (off) below: tests run cells in process
    try:
        res = measure(model, length, args.segment_len, args.decode_tokens, args.seed, args.min_time_s,
                      prepared_mask=prepared_mask, warmup_s=args.warmup_s)
    finally:
        torch.set_flush_denormal(False)
    return {**res, "rss_after_build_mb": rss_built, "peak_rss_mb": peak_rss_mb()}


def run_cell_subprocess(model_name: str, length: int, args: argparse.Namespace) -> dict:
    """One cell in a fresh Python process, so its peak RSS is that cell's alone."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model_name, str(length),
           "--segment-len", str(args.segment_len), "--decode-tokens", str(args.decode_tokens),
           "--window", str(args.window), "--seed", str(args.seed), "--min-time-s", str(args.min_time_s),
           "--warmup-s", str(args.warmup_s),
           "--threads", str(args.threads), "--malloc", args.malloc]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    timeout = args.timeout_factor * args.budget_s
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "timed_out", "reason": f"ran past {timeout:.0f} s (--timeout-factor × --budget-s)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"status": "failed", "reason": f"exit code {proc.returncode}", "stderr_tail": tail}
    return {"status": "ok", **json.loads(lines[-1])}


def estimate_s(done: list[tuple[int, float]], length: int) -> tuple[float | None, str]:
    """Extrapolated stream time of `length` from the measured (length, seconds) of the same model.

    Local power law through the last two points (exponent clamped to [1, 2]; 1 with a single point).
    """
    if not done:
        return None, "no shorter length measured"
    (l1, t1) = done[-1]
    p = 1.0
    if len(done) >= 2:
        (l0, t0) = done[-2]
        if t0 > 0 and t1 > 0 and l1 != l0:
            p = min(2.0, max(1.0, math.log(t1 / t0) / math.log(l1 / l0)))
    return t1 * (length / l1) ** p, f"from {label(l1)} ({t1:.1f} s) with exponent {p:.2f}"


def run_all(args: argparse.Namespace, run_cell: Callable[[str, int, argparse.Namespace], dict]) -> list[dict]:
    """Every (model, length) cell, shortest first; skips over budget are recorded, not dropped."""
    cells = []
    for model_name in args.models:
        done: list[tuple[int, float]] = []
        stopped: str | None = None
        for length in args.lengths:
            cell = {"model": model_name, "length": length, "label": label(length)}
            est, how = estimate_s(done, length)
            if stopped is not None:
                cell.update(status="skipped", reason=stopped)
            elif est is not None and est > args.budget_s:
                cell.update(status="skipped", estimated_s=est,
                            reason=f"estimated {est:.0f} s ({how}) > --budget-s {args.budget_s:g}")
                stopped = f"a shorter length ({label(length)}) was already over --budget-s {args.budget_s:g}"
            else:
                started = time.perf_counter()
                cell.update(run_cell(model_name, length, args))
                cell.setdefault("status", "ok")
                cell["cell_wall_s"] = time.perf_counter() - started
                if est is not None:
                    cell["estimated_s"] = est
                if cell["status"] == "ok":
                    done.append((length, cell["stream_s"]))
                else:
                    stopped = f"{label(length)} {cell['status']}: {cell.get('reason', '')}"
            print(format_row(cell), flush=True)
            cells.append(cell)
    return cells


def format_row(c: dict) -> str:
    if c["status"] != "ok":
        return f"{c['model']:<14} {c['label']:>5}  {c['status']}: {c.get('reason', '')}"
    return (f"{c['model']:<14} {c['label']:>5} {c['tokens_per_s']:>10.0f} {c['stream_s']:>9.1f} "
            f"{c['decode_ms_median']:>10.2f} {c['peak_rss_mb']:>9.0f} {c['rss_after_build_mb']:>9.0f} "
            f"{c['cache_mb']:>9.2f}")


HEADER = (f"{'model':<14} {'len':>5} {'tok/s':>10} {'stream s':>9} {'decode ms':>10} {'peak MB':>9} "
          f"{'built MB':>9} {'cache MB':>9}")


def summarize(cells: list[dict]) -> dict:
    """Per model: tokens/s at the shortest and longest measured length and the max/min ratio."""
    out = {}
    for model_name in dict.fromkeys(c["model"] for c in cells):
        ok = [c for c in cells if c["model"] == model_name and c["status"] == "ok"]
        if not ok:
            out[model_name] = {"measured": []}
            continue
        tps = [c["tokens_per_s"] for c in ok]
        entry = {
            "measured": [c["label"] for c in ok],
            "skipped": [c["label"] for c in cells if c["model"] == model_name and c["status"] != "ok"],
            "tokens_per_s_first": tps[0], "tokens_per_s_last": tps[-1],
            "ratio_first_over_last": tps[0] / tps[-1],
            "ratio_max_over_min": max(tps) / min(tps),
        }
        if model_name.startswith("mag"):
            entry["flat_target"] = FLAT_TARGET
            entry["flat_target_met"] = entry["ratio_max_over_min"] <= FLAT_TARGET
        out[model_name] = entry
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", default=DEFAULT_LENGTHS, help="context lengths, e.g. 1K 4K 1M")
    parser.add_argument("--max-length", default="1M", help="drop --lengths above this")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"of {list(MODELS)}")
    parser.add_argument("--segment-len", type=int, default=2048, help="tokens per forward call")
    parser.add_argument("--window", type=int, default=64, help="MAG attention window")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip cells estimated to stream longer")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="kill a cell after this × --budget-s")
    parser.add_argument("--min-time-s", type=float, default=3.0, help="repeat short streams up to this long")
    parser.add_argument("--warmup-s", type=float, default=1.0,
                        help="stream a short context and decode a few tokens, again, for this long first")
    add_note_argument(parser)
    add_malloc_argument(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/perf/streaming.json")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.lengths = sorted({parse_length(x) for x in args.lengths})
    max_length = parse_length(args.max_length)
    args.lengths = [n for n in args.lengths if n <= max_length]
    if not args.lengths:
        raise ValueError(f"--max-length {args.max_length!r} drops every length of --lengths; allowed: a max-length "
                         f">= the shortest length")
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        raise ValueError(f"--models {bad}: allowed {list(MODELS)}")
    for flag, value in (("--segment-len", args.segment_len), ("--window", args.window), ("--threads", args.threads)):
        if value <= 0:
            raise ValueError(f"{flag} {value}: allowed an int > 0")
    for flag, value in (("--decode-tokens", args.decode_tokens), ("--min-time-s", args.min_time_s),
                        ("--warmup-s", args.warmup_s)):
        if value < 0:
            raise ValueError(f"{flag} {value}: allowed >= 0")
    for flag, value in (("--budget-s", args.budget_s), ("--timeout-factor", args.timeout_factor)):
        if value <= 0:
            raise ValueError(f"{flag} {value}: allowed > 0")
    return args


def main(argv: list[str] | None = None, run_cell: Callable | None = None) -> dict:
    args = parse_args(argv)
    load_at_start = load_average()
    if args.worker:
        model_name, length = args.worker[0], parse_length(args.worker[1])
        print(json.dumps(run_cell_here(model_name, length, args)), flush=True)
        return {}
    print(f"streaming random byte ids, segment {args.segment_len}, MAG window {args.window}, "
          f"{args.threads} thread(s), budget {args.budget_s:g} s per cell\n")
    print(HEADER)
    print("-" * len(HEADER))
    cells = run_all(args, run_cell or run_cell_subprocess)
    summary = summarize(cells)
    results = {
        "benchmark": "streaming",
        "command": "python benchmarks/perf/streaming.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(args.threads, args.note, load_at_start, malloc=apply_malloc(args.malloc)),
        "settings": {"model": "conf/model/qwen3_tiny.yaml (random init)",
                     "models": {"mag": f"conf/memory/mag.yaml, window {args.window}, titans.streaming.stream",
                                "mag_ftz": "mag with torch.set_flush_denormal(True)",
                                "mag_ftz_nomask": "mag_ftz, and attention_mask={'full_attention': None, "
                                                  "'sliding_attention': None} on every call (own streaming loop)",
                                "full": "conf/memory/none.yaml (unpatched Qwen3, full attention, DynamicCache)"},
                     "input": f"random byte ids in [0, 256), seed {args.seed}", "segment_len": args.segment_len,
                     "decode_tokens": args.decode_tokens, "budget_s": args.budget_s,
                     "timeout_s": args.timeout_factor * args.budget_s, "min_time_s": args.min_time_s},
        "cells": cells,
        "summary": summary,
    }
    print()
    for name, s in summary.items():
        if s.get("measured"):
            line = (f"{name}: tokens/s {s['tokens_per_s_first']:.0f} at {s['measured'][0]} -> "
                    f"{s['tokens_per_s_last']:.0f} at {s['measured'][-1]} "
                    f"(first/last {s['ratio_first_over_last']:.2f}x, max/min {s['ratio_max_over_min']:.2f}x)")
            if "flat_target" in s:
                line += f"; target max/min <= {s['flat_target']}x: {'met' if s['flat_target_met'] else 'NOT met'}"
            print(line)
    write_json(Path(args.out), results)
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
