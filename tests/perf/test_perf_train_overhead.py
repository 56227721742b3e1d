"""Smoke test of benchmarks/perf/train_overhead.py at tiny sizes."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("perf_train_overhead", ROOT / "benchmarks/perf/train_overhead.py")
train_overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_overhead)


def test_bad_flags_name_the_flag():
    with pytest.raises(ValueError, match="--rows"):
        train_overhead.parse_args(["--rows", "mog"])
    with pytest.raises(ValueError, match="--freeze"):
        train_overhead.parse_args(["--freeze", "lora"])
    with pytest.raises(ValueError, match="--repeats 0"):
        train_overhead.parse_args(["--repeats", "0"])
    with pytest.raises(ValueError, match="--batch"):
        train_overhead.parse_args(["--batch", "1", "1"])


def test_tiny_run_writes_ratios(tmp_path):
    out = tmp_path / "t.json"
    res = train_overhead.main(["--seq-lens", "64", "--rows", "swa", "mag_linear", "--repeats", "1",
                               "--segment-len", "32", "--batch", "1", "2", "--out", str(out)])
    rows = res["runs"][0]["rows"]
    assert rows["swa"]["step_s_median"] > 0 and rows["mag_linear"]["finite_losses"] == 1
    assert rows["mag_linear"]["time_ratio_vs_swa"] > 0 and "time_ratio_vs_swa" not in rows["swa"]
    assert [run["batch"] for run in res["runs"]] == [1, 2]
    cells = json.loads(out.read_text())["target"]["cells"]
    assert cells["mag_linear@64"]["met"] in (True, False) and "mag_linear@64/b2" in cells
