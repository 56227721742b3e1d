import time

import pytest
from wandb_records import read_wandb_run

import titans.training.loggers as loggers


def test_wandb_mode_auto_is_offline_without_key_or_network(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert loggers.resolve_wandb_mode("auto") == "offline"  # no key
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "WANDB_HOST", "unreachable.invalid")
    t = time.perf_counter()
    assert loggers.resolve_wandb_mode("auto") == "offline"  # key but no network: no hang
    assert time.perf_counter() - t < 5
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert loggers.resolve_wandb_mode("auto") == "disabled"  # an explicit environment choice wins
    assert loggers.resolve_wandb_mode("online") == "online"
    with pytest.raises(ValueError, match=r"logger.wandb.mode='cloud'.*allowed"):
        loggers.resolve_wandb_mode("cloud")


def test_read_wandb_run_rejects_other_files(tmp_path):
    with pytest.raises(ValueError, match="no run-\\*.wandb"):
        read_wandb_run(tmp_path)
    (tmp_path / "run-x.wandb").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_wandb_run(tmp_path)


def test_tensorboard_logger_names_the_missing_package(monkeypatch, tmp_path):
    logger = loggers.tensorboard_logger(save_dir=tmp_path)
    assert type(logger).__name__ == "TensorBoardLogger" and str(tmp_path) in logger.log_dir
    monkeypatch.setattr(loggers, "_importable", lambda module: False)
    with pytest.raises(ModuleNotFoundError, match=r"logger=tensorboard needs the tensorboardX package.*logger=csv"):
        loggers.tensorboard_logger(save_dir=tmp_path)
