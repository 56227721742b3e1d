import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TINY, compose_cfg
from titans.training.builders import build_model
from titans.training.checkpoint import load_model_weights
from titans.training.run import train

ROOT = Path(__file__).resolve().parents[2]
FSDP = ["memory=mag", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", "cpu_threads=1"]


def fsdp_run(out: Path, *overrides: str) -> None:
    proc = subprocess.run([sys.executable, "train.py", *TINY, *FSDP, f"paths.output_dir={out}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_two_process_fsdp_on_cpu_matches_one_process_and_resumes(tiny_cfg, tmp_path):
    """FSDP2 (gloo, 2 ranks x batch 1, every decoder layer + the root sharded) == 1 process x batch 2, as in
    the DDP test: 2 segments per sequence, so 2 backward calls per step into sharded gradients. Then last.ckpt
    (one full file) resumes under FSDP for a 3rd step, matching the 1-process run resumed the same way (weights,
    gradient norm, validation loss), and loads as `init_from` into an unsharded model."""
    one = train(tiny_cfg("memory=mag", "trainer.max_steps=2", "data.batch_size=2",
                         f"paths.output_dir={tmp_path / 'one'}"))
    fsdp_run(tmp_path / "fsdp", "trainer.max_steps=2")
    ckpt = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()  # save_distributed_checkpoint=false: a single file, not a folder of shards
    assert_same_weights(weights(ckpt), weights(one["last_ckpt"]))

    one3 = train(tiny_cfg("memory=mag", "trainer.max_steps=3", "data.batch_size=2", f"ckpt_path={one['last_ckpt']}",
                          "final_validation=true", f"paths.output_dir={tmp_path / 'one3'}"))
    fsdp_run(tmp_path / "fsdp3", "trainer.max_steps=3", f"ckpt_path={ckpt}", "final_validation=true")
    got = json.loads((tmp_path / "fsdp3" / "metrics.json").read_text())
    assert got["global_step"] == 3
    for key in ("train/grad_norm", "val/loss"):  # both reduced over the ranks
        assert got[key] == pytest.approx(one3[key], rel=1e-5), key
    assert_same_weights(weights(tmp_path / "fsdp3" / "checkpoints" / "last.ckpt"), weights(one3["last_ckpt"]))

    cfg = compose_cfg([*TINY, "memory=mag"])
    model, _ = build_model(cfg.model, cfg.memory)
    assert load_model_weights(model, ckpt) == {"missing": [], "unexpected": []}
