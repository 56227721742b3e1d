import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_evaluate_cli_on_a_patched_tiny_model_with_wandb_offline(tmp_path):
    cmd = [sys.executable, "evaluate.py", "benchmark=niah", "model=qwen3_tiny", "memory=mag",
           "benchmark.lengths=[256,512]", "benchmark.samples=1", "benchmark.depths=[0,100]", "logger=wandb",
           "baselines=[swa]", "progress=false", f"paths.output_dir={tmp_path}"]
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"mag", "swa64"}
    for name in summary:
        assert len((tmp_path / name / "samples.jsonl").read_text().splitlines()) == 4
        assert (tmp_path / name / "niah.png").stat().st_size > 2000
    assert (tmp_path / "comparison.md").exists() and (tmp_path / "comparison.png").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline W&B run was written"
