"""benchmarks/perf/targets.py: its commands parse under each benchmark's own parser, and its table reads the
sections' JSONs (fabricated here in their schema; the benchmarks themselves have their own smoke tests)."""

import json
import sys
from pathlib import Path

import pytest

from benchmarks.perf import targets
from tests.perf.test_perf_decode import decode, load

streaming = load("streaming")
train_overhead = load("train_overhead")
# the benchmarks' own parsers, by script name (memory_throughput.py parses inside its main)
PARSERS = {"train_overhead.py": train_overhead.parse_args, "decode.py": decode.parse_args,
           "streaming.py": streaming.parse_args}


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--sections.*allowed"):
        targets.parse_args(["--sections", "speed"])
    with pytest.raises(ValueError, match="--repeats-0.6b 0"):
        targets.parse_args(["--repeats-0.6b", "0"])


def test_commands_parse_under_each_benchmark(tmp_path):
    cmds = targets.commands(targets.parse_args(["--note", "shared"]), tmp_path)
    assert list(cmds) == list(targets.SECTIONS)
    seen = set()
    for runs in cmds.values():
        for name, argv in runs:
            assert argv[0] == sys.executable and argv[argv.index("--out") + 1] == str(tmp_path / f"{name}.json")
            script = Path(argv[1]).name
            if script in PARSERS:
                args = PARSERS[script](argv[2:])
                assert args.note == "shared"
                seen.add(script)
    assert seen == set(PARSERS)
    assert [n for n, _ in cmds["train"]] == ["train_qwen3_tiny", "train_qwen3_0.6b_shape"]


def fake_sections(tmp: Path) -> None:
    """Each section's JSON in its benchmark's schema, with values on both sides of the targets."""
    for model, seq_len, ratio, limit in (("qwen3_tiny", 2048, 2.3, 2.5), ("qwen3_0.6b_shape", 512, 2.4, 2.2)):
        cell = {"time_ratio_vs_swa": ratio, "target": limit, "met": ratio <= limit}
        (tmp / f"train_{model}.json").write_text(json.dumps({"target": {"cells": {f"mag@{seq_len}": cell}}}))
    run = {"config": {"name": "dim512"},
           "forward": {"speedup_median": 5.5, "ours": {"gflops": 60.0}},
           "forward_backward": {"speedup_median": 3.0, "ours": {"gflops": 30.0}}}
    (tmp / "memory.json").write_text(json.dumps({"machine": {"matmul_peak_gflops": 100.0}, "runs": [run]}))
    (tmp / "decode.json").write_text(json.dumps({"summary": {"mag_median_ms_max": 1.7},
                                                 "cells": [{"label": "1K", "rows": {"mag": {}}}]}))
    (tmp / "streaming.json").write_text(json.dumps({"summary": {"mag": {
        "measured": ["1K", "1M"], "skipped": [], "ratio_max_over_min": 1.25}}}))


def test_table_from_the_sections(tmp_path, monkeypatch):
    ran = []

    def run_command(argv):
        ran.append(Path(argv[1]).name)
        fake_sections(Path(argv[argv.index("--out") + 1]).parent)

    monkeypatch.setattr(targets, "run_command", run_command)
    out = tmp_path / "targets.json"
    res = targets.main(["--out", str(out)])
    assert ran == ["train_overhead.py", "train_overhead.py", "memory_throughput.py", "decode.py", "streaming.py"]
    met = {r["target"]: r["met"] for r in res["targets"]}
    assert len(met) == 8
    got = [met[k] for k in met]
    # tiny 2.3 <= 2.5; 0.6b 2.4 > 2.2; forward 5.5x >= 5 at 60%; fwd+bwd 3.0x < 4 at 30% < 40%; decode 1.7 <= 2;
    # streaming 1.25 > 1.2
    assert got == [True, False, True, True, False, False, True, False]
    saved = json.loads(out.read_text())
    assert saved["targets"] == res["targets"] and set(saved["sections"]) == {
        "train_qwen3_tiny", "train_qwen3_0.6b_shape", "memory", "decode", "streaming"}
    assert all("$TMP" in " ".join(argv) for argv in saved["commands"].values())
