"""Neural memory throughput: ours vs titans-pytorch's `NeuralMemory`, matched, in one process.

    python benchmarks/perf/memory_throughput.py [--repeats 5] [--out results/perf/memory_throughput.json]

Matched settings: dim 512, 4 heads x 128, memory MLP depth 2 expansion 4, chunk 64, T 2048,
B 1; titans-pytorch with `batch_size=64` so its weights refresh every chunk like ours (the paper's
Eq. 16-18). A second config at dim 256 (4 heads x 64). Both memories see the same input; timings are
interleaved (ours, peer, ours, peer, ...) so load from other processes hits both alike, and the
median of the repeats is reported. Tokens/s for forward (no grad) and forward+backward (sum of the
output, backpropagated through the inner updates), the ratios, and GFLOP/s against this CPU's fp32
matmul peak measured in the same run.

GFLOP/s use one nominal count for both implementations: the matmul FLOPs of the algorithm both
compute (q/k/v/gate/output projections, a read of the memory MLP per token, and per chunk the MLP
forward, backward and weighted gradient sums on its keys) — see `nominal_flops`.

Rows: `ours` (the deep memory's chunk loop as one autograd op with a hand-written backward,
`titans.memory.chunk_fused`, its loops the C++ of `titans.memory.chunk_native` where the state is within
`chunk_native.MAX_STATE`), `ours_pyscan` (the same op with its loops in Python, `chunk_native.NATIVE = False`),
`ours_autograd` (the same loop in plain ops differentiated by autograd, `titans.memory.chunk.FUSED = False`; its
forward is the plain loop too) and `titans_pytorch`. The machine note in the JSON says whether other jobs shared
the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.perf.machine import add_malloc_argument, add_note_argument, apply_malloc, load_average, machine_info
from titans.io import write_json
from titans.memory import MemoryConfig, NeuralMemory, chunk, chunk_native

CONFIGS = [
    dict(name="dim512", dim=512, heads=4, head_dim=128, depth=2, expansion=4, chunk=64, T=2048, B=1),
    dict(name="dim256", dim=256, heads=4, head_dim=64, depth=2, expansion=4, chunk=64, T=2048, B=1),
]


def nominal_flops(c: dict) -> tuple[float, float]:
    """Matmul FLOPs of one forward, and of forward+backward (backward ≈ 2× forward)."""
    d, h, dh, hid, T, B = c["dim"], c["heads"], c["head_dim"], c["expansion"] * c["head_dim"], c["T"], c["B"]
    inner = h * dh
    proj = 2 * d * 3 * inner + 2 * d * 3 * h + 2 * d * inner + 2 * inner * d  # qkv, gates, out gate, out proj
    mlp = 2 * (dh * hid + hid * dh)  # one MLP forward per token per head
    memory = h * (mlp + mlp + 2 * hid * dh + 2 * mlp)  # read, update forward, δ backprop, grad sums
    fwd = B * T * (proj + memory)
    return fwd, 3 * fwd


def matmul_peak(seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of a 1024³ matmul on this CPU (best of a short loop)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        s = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - s)
    return 2 * 1024**3 / best / 1e9


def build(c: dict):
    from titans_pytorch import NeuralMemory as PeerMemory

    torch.manual_seed(0)
    ours = NeuralMemory(MemoryConfig(dim=c["dim"], heads=c["heads"], head_dim=c["head_dim"], depth=c["depth"],
                                     expansion=c["expansion"], chunk_size=c["chunk"]))
    peer_mlp = dict(depth=c["depth"], expansion_factor=float(c["expansion"]))
    peer = PeerMemory(dim=c["dim"], chunk_size=c["chunk"], batch_size=c["chunk"], dim_head=c["head_dim"],
                      heads=c["heads"], default_model_kwargs=peer_mlp)
    return ours, peer


def timed(fn) -> float:
    s = time.perf_counter()
    fn()
    return time.perf_counter() - s


def run_config(c: dict, repeats: int) -> dict:
    ours, peer = build(c)
    x = torch.randn(c["B"], c["T"], c["dim"])

    def with_switches(fused: bool, native: bool, fn):
        def f():
            before = chunk.FUSED, chunk_native.NATIVE
            chunk.FUSED, chunk_native.NATIVE = fused, native
            try:
                fn()
            finally:
                chunk.FUSED, chunk_native.NATIVE = before
        return f

    def forward(m, fused=True, native=True):
        def f():
            with torch.no_grad():
                m(x)
        return with_switches(fused, native, f)

    def forward_backward(m, fused=True, native=True):
        def f():
            m.zero_grad(set_to_none=True)
            m(x)[0].sum().backward()
        return with_switches(fused, native, f)

    out = {"config": c, "params": {"ours": sum(p.numel() for p in ours.parameters()),
                                   "titans_pytorch": sum(p.numel() for p in peer.parameters())}}
    fwd_flops, fb_flops = nominal_flops(c)
    tokens = c["B"] * c["T"]
    for mode, make, flops in (("forward", forward, fwd_flops), ("forward_backward", forward_backward, fb_flops)):
        fns = {"ours": make(ours), "ours_pyscan": make(ours, native=False), "ours_autograd": make(ours, False),
               "titans_pytorch": make(peer)}
        for f in fns.values():  # warm-up
            f()
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                times[k].append(timed(f))
        res = {}
        for k, ts in times.items():
            med = statistics.median(ts)
            res[k] = {"seconds_median": med, "seconds_all": ts, "tokens_per_s": tokens / med,
                      "gflops": flops / med / 1e9}
        res["speedup_median"] = statistics.median([p / o for o, p in zip(times["ours"], times["titans_pytorch"])])
        for row in ("pyscan", "autograd"):
            res[f"speedup_{row}_median"] = statistics.median(
                [p / o for o, p in zip(times[f"ours_{row}"], times["titans_pytorch"])])
        out[mode] = res
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=[c["name"] for c in CONFIGS])
    parser.add_argument("--out", default="results/perf/memory_throughput.json")
    add_note_argument(parser)
    add_malloc_argument(parser)
    args = parser.parse_args(argv)
    malloc = apply_malloc(args.malloc)
    load_at_start = load_average()
    unknown = sorted(set(args.configs) - {c["name"] for c in CONFIGS})
    if unknown:
        raise ValueError(f"--configs {unknown}: allowed {[c['name'] for c in CONFIGS]}")
    peak = matmul_peak()
    results = {
        "machine": machine_info(torch.get_num_threads(), args.note, load_at_start, matmul_peak_gflops=peak,
                                malloc=malloc),
        "runs": [run_config(c, args.repeats) for c in CONFIGS if c["name"] in args.configs],
    }
    from importlib.metadata import version

    import titans_pytorch  # noqa: F401  (version for the record)

    results["machine"]["titans_pytorch"] = version("titans-pytorch")
    print(f"fp32 matmul peak (1024³): {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads\n")
    head = f"{'config':<8} {'mode':<17} {'ours tok/s':>11} {'pyscan tok/s':>12} {'autograd tok/s':>14} " \
           f"{'peer tok/s':>11} {'speedup':>8} {'(pyscan)':>9} {'(autograd)':>10} {'ours GF/s':>10} {'% peak':>7} " \
           f"{'peer GF/s':>10}"
    print(head)
    print("-" * len(head))
    for r in results["runs"]:
        for mode in ("forward", "forward_backward"):
            m = r[mode]
            print(f"{r['config']['name']:<8} {mode:<17} {m['ours']['tokens_per_s']:>11.0f} "
                  f"{m['ours_pyscan']['tokens_per_s']:>12.0f} {m['ours_autograd']['tokens_per_s']:>14.0f} "
                  f"{m['titans_pytorch']['tokens_per_s']:>11.0f} {m['speedup_median']:>7.2f}x "
                  f"{m['speedup_pyscan_median']:>8.2f}x {m['speedup_autograd_median']:>9.2f}x "
                  f"{m['ours']['gflops']:>10.1f} {100 * m['ours']['gflops'] / peak:>6.1f}% "
                  f"{m['titans_pytorch']['gflops']:>10.1f}")
    print(f"\nwrote {write_json(args.out, results)}")
    return results


if __name__ == "__main__":
    main()
