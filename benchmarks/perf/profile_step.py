"""Where a training step's time goes: torch.profiler over one step of a `train_overhead.py` row.

    python benchmarks/perf/profile_step.py [--model qwen3_tiny] [--row mag] [--seq-len 2048] [--batch 1]
        [--top 25] [--out results/perf/profile_mag.json]

One warm-up step, then one profiled step (`run_segments(backward=True)` + clip + AdamW, as
`train_overhead.py` times it). Prints the ops sorted by self CPU time (the table docs/performance.md quotes),
and the number of op calls (nested ones included). `--row mag_autograd`: the deep memory's chunk loop
differentiated by autograd op by op. One intra-op thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.perf.machine import add_malloc_argument, apply_malloc
from titans.io import write_json

HERE = Path(__file__).resolve().parent


def _train_overhead():
    spec = importlib.util.spec_from_file_location("perf_train_overhead", HERE / "train_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    to = _train_overhead()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3_tiny")
    parser.add_argument("--row", default="mag", help=f"of {list(to.ROWS)}")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--segment-len", type=int, default=128)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="results/perf/profile_mag.json")
    add_malloc_argument(parser)
    args = parser.parse_args(argv)
    if args.row not in to.ROWS:
        raise ValueError(f"--row {args.row!r}: allowed {list(to.ROWS)}")
    torch.set_num_threads(1)
    malloc = apply_malloc(args.malloc)
    stepper = to.Stepper(to.build(args.row, "none", args.model), args.segment_len, 2,
                         fused=args.row not in to.AUTOGRAD_ROWS)
    ids = torch.randint(0, 256, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    stepper.step(ids)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds, _ = stepper.step(ids)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    calls = sum(e.count for e in events if not e.key.startswith("autograd::engine"))
    print(f"{args.model} {args.row}: T {args.seq_len}, batch {args.batch}; step {seconds:.3f} s under the profiler, "
          f"{calls} op calls\n")
    head = f"{'op':<48} {'self ms':>9} {'%':>6} {'calls':>7} {'us/call':>8}"
    print(head)
    print("-" * len(head))
    table = []
    for e in rows[: args.top]:
        ms = e.self_cpu_time_total / 1e3
        table.append({"op": e.key, "self_ms": ms, "share": e.self_cpu_time_total / total_us, "calls": e.count})
        print(f"{e.key[:48]:<48} {ms:>9.1f} {100 * ms * 1e3 / total_us:>5.1f}% {e.count:>7} "
              f"{e.self_cpu_time_total / max(e.count, 1):>8.1f}")
    result = {"benchmark": "profile_step", "command": "python benchmarks/perf/profile_step.py "
              + " ".join(argv if argv is not None else sys.argv[1:]), "model": args.model, "row": args.row,
              "seq_len": args.seq_len, "batch": args.batch, "malloc": malloc, "step_s_profiled": seconds,
              "op_calls": calls, "self_cpu_ms_total": total_us / 1e3, "top": table}
    print(f"\nwrote {write_json(Path(args.out), result)}")
    return result


if __name__ == "__main__":
    main()
