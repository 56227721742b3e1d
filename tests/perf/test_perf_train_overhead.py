"""Smoke test of benchmarks/perf/train_overhead.py at tiny sizes."""

import importlib.util
import json
import re
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
    with pytest.raises(ValueError, match="--model 'qwen3_huge'.*qwen3_0.6b_shape"):
        train_overhead.parse_args(["--model", "qwen3_huge"])


def test_tiny_run_writes_ratios(tmp_path):
    out = tmp_path / "t.json"
    res = train_overhead.main(["--seq-lens", "64", "--rows", "swa", "mag_linear", "mag_autograd", "mag_pyscan",
                               "--repeats", "1",
                               "--segment-len", "32", "--batch", "1", "2", "--out", str(out)])
    rows = res["runs"][0]["rows"]
    assert rows["swa"]["step_s_median"] > 0 and rows["mag_linear"]["finite_losses"] == 1
    assert rows["mag_linear"]["time_ratio_vs_swa"] > 0 and "time_ratio_vs_swa" not in rows["swa"]
    assert [run["batch"] for run in res["runs"]] == [1, 2]
    cells = json.loads(out.read_text())["target"]["cells"]
    assert cells["mag_linear@64"]["met"] in (True, False) and "mag_linear@64/b2" in cells
    # the analytic ratio beside the measured one: the memory adds FLOPs, the baseline has none of its own
    assert rows["swa"]["memory_flop_share"] == 0 and 0 < rows["mag_linear"]["memory_flop_share"] < 1
    assert rows["mag_linear"]["flop_ratio_vs_swa"] == pytest.approx(1 / (1 - rows["mag_linear"]["memory_flop_share"]))
    assert cells["mag_linear@64"]["target"] == 1.5 and cells["mag_autograd@64"]["target"] == 2.5
    from titans.memory import chunk, chunk_native

    assert chunk.FUSED, "the mag_autograd row switches the fused chunk op off for its own steps only"
    assert chunk_native.NATIVE, "the mag_pyscan row switches the native chunk scan off for its own steps only"


def test_default_mag_target_is_per_model():
    assert train_overhead.target_for("mag", "qwen3_tiny") == 2.5
    assert train_overhead.target_for("mag_compiled", "qwen3_0.6b_shape") == 2.2
    assert train_overhead.target_for("mag_proof", "qwen3_tiny") == 1.5


@pytest.mark.slow
def test_qwen3_06b_shape_memory_costs_about_a_layer(tmp_path, capsys):
    """qwen3_0.6b_shape: the default MAG's memory (4 heads of 256, depth 2) is ~0.9x a decoder layer's FLOPs, so
    a MAG step is ~1.9x the swa step at best; the line format of the report is kept."""
    res = train_overhead.main(["--model", "qwen3_0.6b_shape", "--seq-lens", "32", "--rows", "swa", "mag",
                               "--repeats", "1", "--segment-len", "32", "--batch", "1",
                               "--out", str(tmp_path / "t.json")])
    mag = res["runs"][0]["rows"]["mag"]
    assert 1.8 < mag["flop_ratio_vs_swa"] < 2.0 and mag["trainable_params"] > 4e7
    assert re.search(r"^mag@32: \d+\.\d\dx the swa step time; target <= 2\.2x", capsys.readouterr().out, re.M)


def test_proof_rows_are_the_shipped_cpu_proof_memories():
    """`mag_proof` / `mac_proof` time what conf/experiment/cpu_proof_{mag,mac}.yaml train: the row's model carries
    the TitansConfig that the training's composition builds (so an edit of the experiment file moves the row)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from titans.training.builders import build_model

    for variant in ("mag", "mac"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"experiment=cpu_proof_{variant}"])
        GlobalHydra.instance().clear()
        shipped, _ = build_model(cfg.model, cfg.memory, freeze="none")
        row = train_overhead.build(f"{variant}_proof")
        assert row.config.titans == shipped.config.titans
        assert row.config.titans["variant"] == variant and row.config.titans["memory_layers"] == [0]
    assert train_overhead.build("mag_proof_2l").config.titans["memory_layers"] in (None, "all")
