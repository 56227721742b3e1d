"""Smoke test of benchmarks/perf/decode.py at tiny sizes (in process)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks/perf"))  # decode.py imports streaming.py beside it
    try:
        spec = importlib.util.spec_from_file_location(f"perf_{name}", ROOT / "benchmarks/perf" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks/perf"))
    return module


decode = load("decode")


def test_rows_interleaved_in_process_and_fast_paths_restored(tmp_path):
    import titans.memory.neural_memory as neural_memory
    import titans.variants.common as common

    out = tmp_path / "d.json"
    res = decode.main(["--lengths", "40", "--decode-tokens", "18", "--segment-len", "32", "--out", str(out)],
                      in_process=True)
    (cell,) = res["cells"]
    assert set(cell["rows"]) == {"mag", "mag_general", "full"}
    assert all(len(r["ms"]) == 18 and r["median_ms"] > 0 for r in cell["rows"].values())
    assert cell["same_tokens"] is True  # the fast paths decode the same tokens as the general path
    assert neural_memory.READ_ONLY_PATH and common.MASK_FREE_DECODE
    assert json.loads(out.read_text())["summary"]["target_ms"] == 2.0


def test_full_attention_only_up_to_its_max_length_and_bad_flags():
    args = decode.parse_args(["--lengths", "1K", "--full-max-length", "512"])
    assert args.full_max_length == 512 and args.lengths == [1024]
    with pytest.raises(ValueError, match="--rows"):
        decode.parse_args(["--rows", "mog"])
    with pytest.raises(ValueError, match="--decode-tokens 0"):
        decode.parse_args(["--decode-tokens", "0"])
