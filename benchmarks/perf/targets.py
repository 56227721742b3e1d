"""Every speed target of the deep memory in one run: one table of target, measured, met.

    python benchmarks/perf/targets.py [--sections train memory decode streaming] [--out results/perf/targets.json]

Each target is measured by its own benchmark, run here one after the other, each in a fresh process (so one section's
allocations and caches do not carry into the next), and each compares ours with its baseline in that one process,
interleaved:

- `train`: `train_overhead.py` — the default MAG's training step (`conf/memory/mag.yaml`: depth-2 memory in both
  layers) against the same model with the window only (`swa`), on `qwen3_tiny` (T 2048, batch 1, median of
  `--repeats-tiny`) and on `qwen3_0.6b_shape` (T 512 — 128-token segments either way, so the per-token cost is
  T 2048's —, median of `--repeats-0.6b`). Targets 2.5x and 2.2x (`train_overhead.MAG_TARGETS`).
- `memory`: `memory_throughput.py` — the memory alone against titans-pytorch 0.5.5 at its matched configs (dim 512
  and dim 256), forward and forward + backward: speedup targets 5x / 4x, and our share of this CPU's fp32 matmul peak
  (a 1024³ matmul in the same process) 50% / 40%.
- `decode`: `decode.py --rows mag` — greedy decoding after contexts of `--decode-lengths`: at most 2 ms/token.
- `streaming`: `streaming.py --models mag` — tokens/s streaming contexts of `--stream-lengths`: flat within 1.2x.

The JSON keeps the table (`targets`), every section's own JSON (`sections`) and the commands. One intra-op thread
throughout; note in `--note` whether the machine was shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.perf.machine import add_note_argument

ROOT = Path(__file__).resolve().parents[2]
PERF = ROOT / "benchmarks/perf"
SECTIONS = ("train", "memory", "decode", "streaming")
SPEEDUP = {"forward": 5.0, "forward_backward": 4.0}  # the memory alone: ≥ these × titans-pytorch
PEAK_SHARE = {"forward": 0.5, "forward_backward": 0.4}  # ≥ these shares of the fp32 matmul peak
DECODE_MS = 2.0
STREAM_FLAT = 1.2


def commands(args: argparse.Namespace, tmp: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """Per section, (name, argv of the benchmark script) of each run; each writes `tmp/<name>.json`."""
    py = [sys.executable]
    note = ["--note", args.note] if args.note else []
    out = {}
    out["train"] = [
        (f"train_{model}", py + [str(PERF / "train_overhead.py"), "--model", model, "--seq-lens", str(seq_len),
                                 "--batch", "1", "--rows", "swa", "mag", "--repeats", str(repeats),
                                 "--out", str(tmp / f"train_{model}.json"), *note])
        for model, seq_len, repeats in (("qwen3_tiny", 2048, args.repeats_tiny),
                                        ("qwen3_0.6b_shape", 512, args.repeats_06b))]
    out["memory"] = [("memory", py + [str(PERF / "memory_throughput.py"), "--repeats", str(args.repeats_memory),
                                      "--out", str(tmp / "memory.json"), *note])]
    out["decode"] = [("decode", py + [str(PERF / "decode.py"), "--rows", "mag", "--decode-tokens", "256",
                                      "--lengths", *args.decode_lengths,
                                      "--out", str(tmp / "decode.json"), *note])]
    out["streaming"] = [("streaming", py + [str(PERF / "streaming.py"), "--models", "mag", "--lengths",
                                            *args.stream_lengths, "--out", str(tmp / "streaming.json"), *note])]
    return {s: out[s] for s in args.sections}


def run_command(argv: list[str]) -> None:
    """Runs one benchmark script on one intra-op thread (its output goes to this process's stdout); raises when it
    fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(argv, check=True, cwd=ROOT, env=env)


def targets_of(parts: dict[str, dict]) -> list[dict]:
    """The table: one row per target from the sections' JSONs (keyed as `commands` names them)."""
    rows = []

    def add(target: str, limit: str, measured: float, shown: str, met: bool) -> None:
        rows.append({"target": target, "limit": limit, "measured": measured, "shown": shown, "met": bool(met)})

    for model, seq_len in (("qwen3_tiny", 2048), ("qwen3_0.6b_shape", 512)):
        part = parts.get(f"train_{model}")
        if part:
            cell = part["target"]["cells"][f"mag@{seq_len}"]
            add(f"training step, default MAG / swa, {model} (T {seq_len}, batch 1)", f"<= {cell['target']}x",
                cell["time_ratio_vs_swa"], f"{cell['time_ratio_vs_swa']:.2f}x", cell["met"])
    part = parts.get("memory")
    if part:
        peak = part["machine"]["matmul_peak_gflops"]
        for run in part["runs"]:
            name = run["config"]["name"]
            for mode in ("forward", "forward_backward"):
                m = run[mode]
                label = mode.replace("_", " + ")
                add(f"memory alone vs titans-pytorch, {name}, {label}", f">= {SPEEDUP[mode]:g}x",
                    m["speedup_median"], f"{m['speedup_median']:.2f}x", m["speedup_median"] >= SPEEDUP[mode])
                share = m["ours"]["gflops"] / peak
                add(f"memory alone, share of fp32 matmul peak, {name}, {label}", f">= {100 * PEAK_SHARE[mode]:.0f}%",
                    share, f"{100 * share:.1f}% ({m['ours']['gflops']:.0f} of {peak:.0f} GFLOP/s)",
                    share >= PEAK_SHARE[mode])
    part = parts.get("decode")
    if part and part.get("summary"):
        s = part["summary"]
        labels = [c["label"] for c in part["cells"] if "mag" in c.get("rows", {})]
        add(f"MAG decode, qwen3_tiny, median ms/token, worst of {' '.join(labels)}", f"<= {DECODE_MS:g} ms",
            s["mag_median_ms_max"], f"{s['mag_median_ms_max']:.2f} ms", s["mag_median_ms_max"] <= DECODE_MS)
    part = parts.get("streaming")
    if part and "mag" in part.get("summary", {}):
        s = part["summary"]["mag"]
        if s.get("measured"):
            ratio = s["ratio_max_over_min"]
            add(f"MAG streaming tokens/s, max / min over {' '.join(s['measured'])}", f"<= {STREAM_FLAT:g}x",
                ratio, f"{ratio:.2f}x" + (f" (skipped: {' '.join(s['skipped'])})" if s.get("skipped") else ""),
                ratio <= STREAM_FLAT and not s.get("skipped"))
    return rows


def table(rows: list[dict]) -> str:
    width = max(len(r["target"]) for r in rows) if rows else 10
    lines = [f"{'target':<{width}}  {'limit':>8}  {'measured':<42} met", "-" * (width + 60)]
    for r in rows:
        lines.append(f"{r['target']:<{width}}  {r['limit']:>8}  {r['shown']:<42} {'yes' if r['met'] else 'NO'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help=f"of {list(SECTIONS)}")
    parser.add_argument("--repeats-tiny", type=int, default=9)
    parser.add_argument("--repeats-0.6b", dest="repeats_06b", type=int, default=9)
    parser.add_argument("--repeats-memory", type=int, default=5)
    parser.add_argument("--decode-lengths", nargs="+", default=["1K", "16K", "64K", "1M"])
    parser.add_argument("--stream-lengths", nargs="+", default=["1K", "16K", "1M"])
    add_note_argument(parser)
    parser.add_argument("--out", default="results/perf/targets.json")
    args = parser.parse_args(argv)
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"--sections {bad}: allowed {list(SECTIONS)}")
    for flag in ("repeats_tiny", "repeats_06b", "repeats_memory"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-').replace('06b', '0.6b')} {getattr(args, flag)}: allowed "
                             "an int > 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from titans.io import write_json

    parts, argvs = {}, {}
    with tempfile.TemporaryDirectory(prefix="titans_targets_") as tmp:
        for section, runs in commands(args, Path(tmp)).items():
            for name, cmd in runs:
                print(f"\n== {section}: {' '.join(Path(c).name if c.startswith('/') else c for c in cmd)}",
                      flush=True)
                run_command(cmd)
                parts[name] = json.loads((Path(tmp) / f"{name}.json").read_text())
                argvs[name] = [c.replace(tmp, "$TMP").replace(str(ROOT) + "/", "") for c in cmd[1:]]
    rows = targets_of(parts)
    print("\n" + table(rows))
    results = {"benchmark": "targets", "command": "python benchmarks/perf/targets.py "
               + " ".join(argv if argv is not None else sys.argv[1:]), "note": args.note, "targets": rows,
               "commands": argvs, "sections": parts}
    print(f"\nwrote {write_json(Path(args.out), results)}")
    return results


if __name__ == "__main__":
    main()
