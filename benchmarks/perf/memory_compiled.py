"""The deep memory alone with its chunk loop compiled (`MemoryConfig.compile_scan`) against the eager fused op.

    python benchmarks/perf/memory_compiled.py [--configs tiny dim512] [--repeats 5] [--threads 1] [--note TEXT]
        [--out results/perf/memory_compiled.json]

One training call of one `NeuralMemory` (forward and backward of the output's square sum plus the new weights'), in
one process, rows interleaved (one call of each row in turn, `--calls` calls per timing, median of `--repeats`):
    eager       the fused op (`titans.memory.chunk_fused.ChunkScan`) as it runs by default
    scan        memory.compile_scan=true: the op's forward and backward loops compiled in blocks of 8 chunks
    all         memory.compile=true beside it: the memory's forward around the op compiled too (the op a graph break)
Configs: `tiny` is the default MAG's memory on `qwen3_tiny` (dim 128, 4 heads x 32, depth 2, chunk 16) on one
128-token training segment; `dim512` the matched config of `memory_throughput.py` (4 x 128, chunk 64, T 2048).
`first_call_s` is the first call of each row: compiling for its shapes (from inductor's on-disk cache when an
earlier process compiled the same graphs; `TORCHINDUCTOR_CACHE_DIR` sets where it is). The outputs and gradients of
each compiled row are compared with the eager row's (`max_rel_diff`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.perf.machine import add_malloc_argument, add_note_argument, apply_malloc, load_average, machine_info
from titans.io import write_json
from titans.memory import MemoryConfig, NeuralMemory

CONFIGS = {
    "tiny": dict(dim=128, heads=4, depth=2, chunk_size=16, T=128),
    "dim512": dict(dim=512, heads=4, depth=2, chunk_size=64, T=2048),
}
ROWS = {"eager": {}, "scan": {"compile_scan": True}, "all": {"compile_scan": True, "compile": True}}


def call(mem: NeuralMemory, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One training call: forward, backward of a loss on the output and the new weights; output and gradients."""
    mem.zero_grad(set_to_none=True)
    y, state = mem(x)
    (y.pow(2).sum() + sum(w.pow(2).sum() for w in state.weights.values())).backward()
    return y.detach(), {n: p.grad.clone() for n, p in mem.named_parameters() if p.grad is not None}


def max_rel_diff(a: tuple, b: tuple) -> float:
    """The largest |a − b| / max|b| over the output and every gradient."""
    pairs = [(a[0], b[0])] + [(a[1][n], b[1][n]) for n in b[1]]
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in pairs)


def run_config(name: str, rows: list[str], repeats: int, calls: int) -> dict:
    c = dict(CONFIGS[name])
    T = c.pop("T")
    torch.manual_seed(0)
    mems = {r: NeuralMemory(MemoryConfig(**c, **ROWS[r])) for r in rows}
    for r in rows[1:]:
        mems[r].load_state_dict(mems[rows[0]].state_dict())
    x = torch.randn(1, T, c["dim"])
    result = {"settings": {**c, "T": T}, "rows": {}}
    first = {}
    for r in rows:
        t = time.perf_counter()
        first[r] = call(mems[r], x)
        result["rows"][r] = {"first_call_s": time.perf_counter() - t}
    times = {r: [] for r in rows}
    for rep in range(repeats):
        for r in rows[rep % len(rows):] + rows[: rep % len(rows)]:
            t = time.perf_counter()
            for _ in range(calls):
                call(mems[r], x)
            times[r].append((time.perf_counter() - t) / calls)
    for r in rows:
        med = statistics.median(times[r])
        result["rows"][r].update(call_ms_median=1e3 * med, call_ms_all=[1e3 * t for t in times[r]],
                                 tokens_per_s=T / med)
        if r != rows[0]:
            result["rows"][r]["speedup_vs_" + rows[0]] = statistics.median(times[rows[0]]) / med
            result["rows"][r]["max_rel_diff_vs_" + rows[0]] = max_rel_diff(first[r], first[rows[0]])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help=f"of {list(CONFIGS)}")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"of {list(ROWS)} (the first is the base)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="calls per timing")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="results/perf/memory_compiled.json")
    add_note_argument(parser)
    add_malloc_argument(parser)
    args = parser.parse_args(argv)
    for flag, values, allowed in (("--configs", args.configs, CONFIGS), ("--rows", args.rows, ROWS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{flag} {bad}: allowed {list(allowed)}")
    for flag, value in (("--repeats", args.repeats), ("--calls", args.calls), ("--threads", args.threads)):
        if value <= 0:
            raise ValueError(f"{flag} {value}: allowed an int > 0")
    load_at_start = load_average()
    torch.set_num_threads(args.threads)
    malloc = apply_malloc(args.malloc)
    # every (config, row) compiles its own graphs in this one process: more than dynamo's default limit of 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    results = {}
    for name in args.configs:
        res = results[name] = run_config(name, args.rows, args.repeats, args.calls)
        print(f"\n{name}: {res['settings']}, forward + backward of one call, median of {args.repeats} x {args.calls}")
        for r, row in res["rows"].items():
            extra = "".join(f", {k} {v:.3g}" for k, v in row.items() if k.startswith(("speedup", "max_rel")))
            print(f"  {r:<6} {row['call_ms_median']:8.2f} ms/call  first call {row['first_call_s']:7.2f} s{extra}")
    out = {"benchmark": "memory_compiled", "command": "python benchmarks/perf/memory_compiled.py "
           + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_info(args.threads, args.note, load_at_start, malloc=malloc), "configs": results}
    write_json(args.out, out)
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
