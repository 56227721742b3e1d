import json
import math

import pytest

from titans.training.run import train


def test_train_none_returns_and_writes_metrics(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_steps=2")
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and len(metrics["train/losses"]) == 2
    assert all(math.isfinite(x) for x in metrics["train/losses"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["train/losses"] == metrics["train/losses"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))
