"""Hydra behaves like Hydra: the command line beats a curriculum stage, `--cfg job` shows the stage applied,
a sweep gives every job its own folder (and writes nothing else into the working directory), and a collector
tabulates a sweep."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict

from tests.training.conftest import TINY, compose_cfg
from titans.training.hydra_job import job_output_dir, show_config_with_stage
from titans.training.stages import apply_stage

ROOT = Path(__file__).resolve().parents[2]
STAGE = ["curriculum=tiny", "stage=memory_long", "trainer.max_steps=3", "data.seq_len=256"]


def test_command_line_overrides_win_over_the_stage():
    cfg = compose_cfg(STAGE)
    merged = apply_stage(cfg, "memory_long", overrides=STAGE)
    assert merged.trainer.max_steps == 3 and merged.data.seq_len == 256  # the command line
    assert merged.bptt.bptt_window == 4 and merged.optimizer.lr == 1e-3  # the stage's defaults
    assert list(merged.data.train.lengths) == [768, 1024] and merged.freeze == "memory"
    assert apply_stage(cfg, "memory_long").trainer.max_steps == 300  # no command line: the stage's value


def test_an_experiment_selection_on_the_command_line_is_not_a_key():
    """`train.py experiment=X stage=Y`: experiment files are `@package _global_`, so `experiment` is a group
    selection that names no key of the composed config; it must not be re-applied as a value (it raised)."""
    overrides = ["experiment=cpu_proof_mag", "stage=2k", "trainer.max_steps=7"]
    cfg = compose_cfg(overrides)
    merged = apply_stage(cfg, "2k", overrides=overrides)
    assert merged.trainer.max_steps == 7 and merged.data.seq_len == 2048


def test_train_runs_the_stage_with_the_command_line_on_top(tiny_cfg, monkeypatch):
    import titans.training.run as run_mod

    overrides = [*TINY, "curriculum=tiny", "stage=memory_long", "trainer.max_steps=2", "data.seq_len=512",
                 "data.train.lengths=[512]", "data.val.lengths=[512]"]  # 2-hop hash hop needs ~400 tokens
    monkeypatch.setattr(run_mod, "hydra_overrides", lambda: overrides)
    metrics = run_mod.train(tiny_cfg(*overrides[len(TINY):], "memory=mag", "memory.memory.heads=2",
                                     "memory.window=32"))
    assert metrics["global_step"] == 2  # the stage says 300


def test_cfg_job_prints_the_stage_applied(capsys):
    assert show_config_with_stage([*STAGE, "--cfg", "job"], "train")
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["trainer"]["max_steps"] == 3 and shown["data"]["seq_len"] == 256
    assert shown["bptt"]["bptt_window"] == 4 and shown["optimizer"]["lr"] == 1e-3 and shown["stage"] is None
    assert not show_config_with_stage(["trainer.max_steps=3", "--cfg", "job"], "train")  # no stage: Hydra's own
    assert not show_config_with_stage(STAGE, "train")  # no --cfg: a run


def test_a_sweep_job_writes_to_its_own_folder(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_cfg([f"paths.output_dir={tmp_path}"])
    hydra_cfg = compose_cfg([f"paths.output_dir={tmp_path}", "hydra.job.num=3"], return_hydra_config=True)
    assert hydra_cfg.hydra.sweep.dir == str(tmp_path) and str(hydra_cfg.hydra.sweep.subdir) == "3"
    with open_dict(hydra_cfg):
        hydra_cfg.hydra.mode = "MULTIRUN"
        hydra_cfg.hydra.runtime.output_dir = str(tmp_path / "3")
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        job_output_dir(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert cfg.paths.output_dir == str(tmp_path / "3") and cfg.paths.ckpt_dir == str(tmp_path / "3" / "checkpoints")


def test_collector_tabulates_a_sweep(tmp_path, capsys):
    from benchmarks.sweep import main

    for num, (memory, window, acc) in enumerate([("mag", 64, 0.5), ("mal", 64, 0.25), ("mag", 128, 0.75)]):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"memory={memory}", f"memory.window={window}",
                                                                       "trainer.max_steps=5"]))
        (job / "metrics.json").write_text(json.dumps({"global_step": 5, "val/answer_acc": acc, "train/loss": 1.0}))
    rows = main([str(tmp_path)])
    assert [(r["job"], r["memory"], r["memory.window"], r["val/answer_acc"]) for r in rows] == [
        ("0", "mag", "64", 0.5), ("1", "mal", "64", 0.25), ("2", "mag", "128", 0.75)]
    assert "trainer.max_steps" not in rows[0]  # the same in every job: not a column
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| job | memory | memory.window | global_step | skipped_steps | train/loss | " \
                                  "val/loss | val/answer_acc |"
    assert (tmp_path / "sweep.md").read_text() == out and len(json.loads((tmp_path / "sweep.json").read_text())) == 3
    with pytest.raises(ValueError, match="holds no"):
        main([str(tmp_path / "0" / ".hydra")])


def _run(args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TITANS_ROOT", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_train_py_sweep_and_stage_from_the_command_line(tmp_path):
    """`python train.py -m ...` from an empty working directory: every job in its own folder under outputs/,
    nothing else in the working directory; `stage=... trainer.max_steps=3` runs 3 steps."""
    tiny = [o for o in TINY if not o.startswith("data.")] + ["data.batch_size=1", "cpu_threads=1"]
    proc = _run([str(ROOT / "train.py"), "-m", *tiny, "logger=csv", "trainer.max_steps=1", "memory=mag",
                 "memory.memory.heads=2",
                 "memory.window=32,64"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(tmp_path) == ["outputs"]
    jobs = sorted(p.parent for p in (tmp_path / "outputs").rglob("metrics.json"))
    assert [j.name for j in jobs] == ["0", "1"] and jobs[0].parent == jobs[1].parent
    windows = [yaml.safe_load((j / ".hydra" / "config.yaml").read_text())["memory"]["window"] for j in jobs]
    assert windows == [32, 64]
    for j in jobs:
        assert (j / "checkpoints" / "last.ckpt").is_file() and (j / "csv" / "metrics.csv").is_file()

    out = tmp_path / "stage"
    proc = _run([str(ROOT / "train.py"), *TINY, "curriculum=tiny", "stage=memory_long", "trainer.max_steps=3",
                 "data.seq_len=512", "data.train.lengths=[512]", "data.val.lengths=[512]", "cpu_threads=1",
                 "memory=mag", "memory.memory.heads=2", "memory.window=32", f"paths.output_dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3
    proc = _run([str(ROOT / "train.py"), *STAGE, "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["trainer"]["max_steps"] == 3
