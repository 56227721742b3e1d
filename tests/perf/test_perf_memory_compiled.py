"""Smoke test of benchmarks/perf/memory_compiled.py (the eager row only: nothing compiles)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("perf_memory_compiled", ROOT / "benchmarks/perf/memory_compiled.py")
memory_compiled = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory_compiled)


def test_bad_flags_name_the_flag(tmp_path):
    for argv, flag in ((["--configs", "huge"], "--configs"), (["--rows", "fast"], "--rows"),
                       (["--calls", "0"], "--calls")):
        with pytest.raises(ValueError, match=flag):
            memory_compiled.main([*argv, "--out", str(tmp_path / "m.json")])


def test_eager_row_writes_timings_and_the_machine(tmp_path):
    out = tmp_path / "m.json"
    memory_compiled.main(["--configs", "tiny", "--rows", "eager", "--repeats", "1", "--calls", "1", "--note", "test",
                          "--out", str(out)])
    res = json.loads(out.read_text())
    row = res["configs"]["tiny"]["rows"]["eager"]
    assert row["call_ms_median"] > 0 and row["first_call_s"] > 0 and res["machine"]["note"] == "test"
    assert res["machine"]["load_average_end"] is None or len(res["machine"]["load_average_end"]) == 3
