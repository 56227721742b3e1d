import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TINY
from titans.training.run import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process_with_the_same_samples(tiny_cfg, tmp_path):
    """2 ranks x batch 1 (gloo) == 1 process x batch 2: rank r draws samples 2b + r of the stream, gradients
    are averaged, so after 2 steps the weights agree. 2 segments per sequence: 2 backward calls per step."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "train.py", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
         "trainer.max_steps=2", "cpu_threads=1", f"paths.output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(tiny_cfg("trainer.max_steps=2", "data.batch_size=2", f"paths.output_dir={tmp_path / 'one'}"))
    a = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(single["last_ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
