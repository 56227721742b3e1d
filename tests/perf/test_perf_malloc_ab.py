"""benchmarks/perf/malloc_ab.py: each section's command parses under its benchmark's own parser with the allocator
flag, the two settings alternate per pair, and the summary reads each benchmark's JSON schema (fabricated here; the
benchmarks have their own smoke tests)."""

import json
import sys
from pathlib import Path

import pytest

from benchmarks.perf import malloc_ab
from tests.perf.test_perf_targets import PARSERS


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--sections.*allowed"):
        malloc_ab.parse_args(["--sections", "speed"])
    with pytest.raises(ValueError, match="--pairs 0"):
        malloc_ab.parse_args(["--pairs", "0"])


def test_commands_parse_under_each_benchmark(tmp_path):
    seen = set()
    for section in malloc_ab.SECTIONS:
        for mode in malloc_ab.MODES:
            argv = malloc_ab.command(section, mode, tmp_path / "x.json")
            assert argv[0] == sys.executable and argv[argv.index("--malloc") + 1] == mode
            script = Path(argv[1]).name
            if script in PARSERS:
                assert PARSERS[script](argv[2:]).malloc == mode
                seen.add(script)
    assert seen == set(PARSERS)


def fake(script: str, mode: str) -> dict:
    """A JSON in `script`'s schema whose numbers say which setting ran (keep: larger)."""
    x = 2.0 if mode == "keep" else 1.0
    if script == "train_overhead.py":
        return {"runs": [{"rows": {"swa": {"step_s_median": 0.2 * x},
                                   "mag": {"step_s_median": 0.5 * x, "time_ratio_vs_swa": 2.4 * x}}}]}
    if script == "memory_throughput.py":
        cell = {"ours": {"tokens_per_s": 30000 * x}, "titans_pytorch": {"tokens_per_s": 7000.0},
                "speedup_median": 4.3 * x}
        return {"runs": [{"forward": cell, "forward_backward": cell}]}
    if script == "decode.py":
        return {"cells": [{"label": "1K", "rows": {"mag": {"median_ms": 1.7 * x}}}]}
    return {"cells": [{"label": "1K", "status": "ok", "tokens_per_s": 20000 * x},
                      {"label": "1M", "status": "skipped"}]}


def test_pairs_alternate_and_the_summary_reads_each_schema(tmp_path, monkeypatch):
    ran = []

    def run_command(argv):
        script, mode = Path(argv[1]).name, argv[argv.index("--malloc") + 1]
        ran.append((script, mode))
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps(fake(script, mode)))

    monkeypatch.setattr(malloc_ab, "run_command", run_command)
    out = tmp_path / "m.json"
    res = malloc_ab.main(["--pairs", "2", "--out", str(out)])
    scripts = ["train_overhead.py", "train_overhead.py", "memory_throughput.py", "decode.py", "streaming.py"]
    assert ran == [(s, m) for _ in range(2) for s in scripts for m in ("default", "keep")]
    assert res["tiny_step"] == res["0.6b_step"] == 2 * [{"default": {"swa_s": 0.2, "mag_s": 0.5, "mag_over_swa": 2.4},
                                                         "keep": {"swa_s": 0.4, "mag_s": 1.0, "mag_over_swa": 4.8}}]
    assert res["memory_dim256"][1]["keep"]["forward"] == {"ours_tok_s": 60000, "titans_pytorch_tok_s": 7000,
                                                          "speedup": 8.6}
    assert res["decode"][0] == {"default": {"1K": 1.7}, "keep": {"1K": 3.4}}
    assert res["streaming"][0] == {"default": {"1K": 20000}, "keep": {"1K": 40000}}  # skipped cells left out
    assert json.loads(out.read_text())["commands"]["decode"].endswith("--malloc {default,keep}")
