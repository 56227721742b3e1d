"""Smoke test of benchmarks/perf/streaming.py at tiny sizes (in process, no subprocesses)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"perf_{name}", ROOT / "benchmarks/perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


streaming = load("streaming")


def test_parse_length():
    assert [streaming.parse_length(x) for x in ("1K", "4k", "1M", "300")] == [1024, 4096, 1024**2, 300]
    assert streaming.label(262144) == "256K" and streaming.label(300) == "300"
    with pytest.raises(ValueError, match="--lengths"):
        streaming.parse_length("4G")


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--models"):
        streaming.parse_args(["--models", "mog"])
    with pytest.raises(ValueError, match="--max-length"):
        streaming.parse_args(["--lengths", "4K", "--max-length", "1K"])
    with pytest.raises(ValueError, match="--segment-len 0"):
        streaming.parse_args(["--segment-len", "0"])


def test_estimate_extrapolates_by_the_local_power_law():
    assert streaming.estimate_s([], 4096)[0] is None
    assert streaming.estimate_s([(1024, 1.0)], 4096)[0] == pytest.approx(4.0)  # one point: linear
    assert streaming.estimate_s([(1024, 1.0), (2048, 4.0)], 4096)[0] == pytest.approx(16.0)  # quadratic
    assert streaming.estimate_s([(1024, 1.0), (2048, 64.0)], 4096)[0] == pytest.approx(256.0)  # clamped at 2


def test_cells_in_process(tmp_path):
    out = tmp_path / "s.json"
    res = streaming.main(["--lengths", "64", "--segment-len", "32",
                          "--decode-tokens", "2", "--min-time-s", "0", "--budget-s", "5", "--out", str(out)],
                         run_cell=streaming.run_cell_here)
    cells = {(c["model"], c["length"]): c for c in res["cells"]}
    for model in streaming.MODELS:
        c = cells[(model, 64)]
        assert c["status"] == "ok" and c["tokens_per_s"] > 0 and c["decode_ms_median"] > 0
        assert c["peak_rss_mb"] > 0 and c["rss_after_build_mb"] > 0 and c["cache_mb"] > 0
    assert json.loads(out.read_text())["summary"]["mag"]["measured"] == ["64"]


def test_skip_when_estimate_exceeds_budget():
    args = streaming.parse_args(["--lengths", "1K", "4K", "16K", "--models", "full", "--budget-s", "10"])
    times = {1024: 1.0, 4096: 9.0}
    cells = streaming.run_all(args, lambda m, n, a: {"stream_s": times[n], "tokens_per_s": n / times[n],
                                                       "decode_ms_median": 1.0, "peak_rss_mb": 1.0,
                                                       "rss_after_build_mb": 1.0, "cache_mb": 1.0})
    assert [c["status"] for c in cells] == ["ok", "ok", "skipped"]
    assert "--budget-s 10" in cells[2]["reason"] and cells[2]["estimated_s"] > 10


def test_prepared_mask_row_computes_the_same_logits():
    import torch

    from titans.streaming import stream

    model = streaming.build("mag", 64)
    ids = streaming.make_ids(96, 0)
    _, ref = stream(model, ids, 32, return_logits=True)
    _, got = stream(model, ids, 32, return_logits=True, attention_mask=streaming.EMPTY_MASKS)
    torch.testing.assert_close(got, ref)
