"""Quiet, useful logs: each line once, no vendor tips or transformers bars for a tiny model, Lightning's
progress bar while training, and one line per curriculum stage start and end with its key numbers."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
BANNERS = ("Writing model shards", "Loading weights", "Tip:", "litlogger", "litmodels")


def _lines(text: str) -> list[str]:
    """Log lines, without the progress bar's redraws (carriage returns) and blank lines."""
    return [ln.strip() for ln in text.replace("\r", "\n").splitlines()
            if ln.strip() and "━" not in ln and "it/s" not in ln]


@pytest.mark.slow
def test_a_tiny_run_prints_each_line_once_and_no_banners(tmp_path):
    args = [o for o in TINY if o != "trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args, "logger=csv", "memory=mag", "memory.memory.heads=2",
                           "memory.window=32", "trainer.max_steps=2", "cpu_threads=1", f"paths.output_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for banner in BANNERS:
        assert banner not in out, banner
    lines = _lines(out)
    messages = [ln.split("] - ", 1)[-1].removeprefix("INFO: ") for ln in lines]
    assert any("max_steps=2" in m for m in messages)  # Lightning's lines are there ...
    assert len(messages) == len(set(messages)), lines  # ... once each
    assert "Epoch 0" in out  # the progress bar
    assert (tmp_path / "train.log").read_text().count("max_steps=2` reached") == 1  # and in the job's log file


def test_curriculum_logs_one_line_per_stage_start_and_end(tiny_cfg, caplog):
    from titans.training.curriculum import run_curriculum

    cfg = tiny_cfg("curriculum=tiny")
    cfg.curriculum.stages = [{"name": "one", "trainer": {"max_steps": 1}}, {"name": "two", "trainer": {"max_steps": 2}}]
    with caplog.at_level(logging.INFO, logger="titans.training.curriculum"):
        run_curriculum(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "titans.training.curriculum"]
    assert len(lines) == 4, lines
    assert lines[0].startswith("curriculum: stage 1/2 one starts: 1 steps, seq_len 320, segment_len 160")
    assert lines[1].startswith("curriculum: stage 1/2 one done in") and "1 steps (0 skipped), train/loss" in lines[1]
    assert lines[3].startswith("curriculum: stage 2/2 two done in") and "2 steps (0 skipped)" in lines[3]
