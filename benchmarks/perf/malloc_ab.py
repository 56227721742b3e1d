"""glibc's default allocator against freed memory kept (`titans.memory.malloc`), benchmark by benchmark, alternated.

    python benchmarks/perf/malloc_ab.py [--pairs 3] [--sections tiny_step 0.6b_step memory_dim256 decode streaming]
        [--out results/perf/malloc_keep.json]

The allocator is process-wide and cannot be set back, so the two settings cannot share a process: each section's
benchmark runs in a fresh process with `--malloc default`, then again with `--malloc keep`, and the pairs repeat
(`--pairs`), so a change in the host's load hits both settings of a pair alike. One intra-op thread. Per pair and
setting the summary keeps the figures docs/performance.md ("Freed memory kept") quotes:

- `tiny_step`, `0.6b_step`: `train_overhead.py` (swa and the default MAG; `qwen3_tiny` T 2048, `qwen3_0.6b_shape`
  T 512): the median step times and the benchmark's own MAG / swa figure (the median of the interleaved ratios);
- `memory_dim256`: `memory_throughput.py --configs dim256`: ours and titans-pytorch's tokens/s and the speedup,
  forward and forward + backward (the peer runs in the same process, under the same allocator);
- `decode`: `decode.py --rows mag`: median ms/token per context length;
- `streaming`: `streaming.py --models mag`: tokens/s per context length.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.perf.machine import add_note_argument, load_average, machine_info
from benchmarks.perf.targets import PERF, run_command
from titans.io import write_json

MODES = ("default", "keep")


def _step(part: dict) -> dict:
    rows = part["runs"][0]["rows"]
    return {"swa_s": round(rows["swa"]["step_s_median"], 4), "mag_s": round(rows["mag"]["step_s_median"], 4),
            "mag_over_swa": round(rows["mag"]["time_ratio_vs_swa"], 3)}


def _memory(part: dict) -> dict:
    run = part["runs"][0]
    return {mode: {"ours_tok_s": round(run[mode]["ours"]["tokens_per_s"]),
                   "titans_pytorch_tok_s": round(run[mode]["titans_pytorch"]["tokens_per_s"]),
                   "speedup": round(run[mode]["speedup_median"], 2)} for mode in ("forward", "forward_backward")}


def _decode(part: dict) -> dict:
    return {c["label"]: round(c["rows"]["mag"]["median_ms"], 2) for c in part["cells"] if "mag" in c.get("rows", {})}


def _streaming(part: dict) -> dict:
    return {c["label"]: round(c["tokens_per_s"]) for c in part["cells"] if c.get("status") == "ok"}


# section -> (benchmark script and its arguments, what the summary keeps of its JSON)
SECTIONS = {
    "tiny_step": (["train_overhead.py", "--model", "qwen3_tiny", "--seq-lens", "2048", "--batch", "1",
                   "--rows", "swa", "mag", "--repeats", "7"], _step),
    "0.6b_step": (["train_overhead.py", "--model", "qwen3_0.6b_shape", "--seq-lens", "512", "--batch", "1",
                   "--rows", "swa", "mag", "--repeats", "5"], _step),
    "memory_dim256": (["memory_throughput.py", "--repeats", "3", "--configs", "dim256"], _memory),
    "decode": (["decode.py", "--rows", "mag", "--decode-tokens", "256", "--lengths", "1K", "16K"], _decode),
    "streaming": (["streaming.py", "--models", "mag", "--lengths", "1K", "16K"], _streaming),
}


def command(section: str, mode: str, out: Path) -> list[str]:
    script, *rest = SECTIONS[section][0]
    return [sys.executable, str(PERF / script), *rest, "--malloc", mode, "--out", str(out)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="how many times each section runs under both settings")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help=f"of {list(SECTIONS)}")
    parser.add_argument("--out", default="results/perf/malloc_keep.json")
    add_note_argument(parser)
    args = parser.parse_args(argv)
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"--sections {bad}: allowed {list(SECTIONS)}")
    if args.pairs <= 0:
        raise ValueError(f"--pairs {args.pairs}: allowed an int > 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_at_start = load_average()
    pairs: dict[str, list[dict]] = {s: [] for s in args.sections}
    with tempfile.TemporaryDirectory(prefix="titans_malloc_ab_") as tmp:
        for i in range(args.pairs):
            for section in args.sections:
                pair = {}
                for mode in MODES:
                    out = Path(tmp) / f"{section}_{mode}_{i}.json"
                    argv_ = command(section, mode, out)
                    print(f"== pair {i + 1}/{args.pairs}, {section}, --malloc {mode}", flush=True)
                    run_command(argv_)
                    pair[mode] = SECTIONS[section][1](json.loads(out.read_text()))
                pairs[section].append(pair)
    result = {"benchmark": "malloc_ab",
              "command": "python benchmarks/perf/malloc_ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(1, args.note, load_at_start),
              "commands": {s: " ".join(["python", f"benchmarks/perf/{SECTIONS[s][0][0]}", *SECTIONS[s][0][1:],
                                        "--malloc", "{default,keep}"]) for s in args.sections},
              "order": "per pair, every section runs with --malloc default, then with --malloc keep",
              **pairs}
    for section, rows in pairs.items():
        print(f"{section}: " + "; ".join(f"default {r['default']} | keep {r['keep']}" for r in rows))
    print(f"wrote {write_json(Path(args.out), result)}")
    return result


if __name__ == "__main__":
    main()
