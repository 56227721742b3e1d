"""A run resumed from its checkpoint equals the uninterrupted run (with a memory, and a skipped non-finite
step before the checkpoint) and continues the same logs: the CSV history, steps, counters, the W&B run."""

import csv
import time

import pytest
import torch

import titans.training.run as run_mod
from titans.training.callbacks import ThroughputCallback
from titans.training.run import train

MAG = ["memory=mag", "memory.memory.heads=2", "memory.window=32", "logger=[csv,tensorboard]"]


def _poison_batch(monkeypatch, bad_batch: int):
    """Batch `bad_batch` (counted over the whole run, resumes included) gets NaN logits: a skipped step."""
    real = run_mod.build_model
    state = {"module": None}

    def poisoned(*args, **kwargs):
        model, tok = real(*args, **kwargs)

        def hook(_m, _inp, out):
            module = state["module"]
            return out * float("nan") if module is not None and module.batches_seen == bad_batch else out

        model.lm_head.register_forward_hook(hook)
        return model, tok

    class Track(run_mod.pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state["module"] = pl_module

    monkeypatch.setattr(run_mod, "build_model", poisoned)
    return Track


def _rows(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [(int(r["step"]), float(r["train/loss"]), float(r["train/lr"]), float(r["train/skipped_steps"]),
             float(r["train/tokens"])) for r in rows]


def _tensorboard_steps(path, tag="train/loss"):
    """Steps at which the TensorBoard event file `path` holds `tag` (TFRecord framing, tensorboardX protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, pos, steps = path.read_bytes(), 0, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        event = Event()
        event.ParseFromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_equals_the_uninterrupted_run_and_continues_its_log(tiny_cfg, tmp_path, monkeypatch):
    """4 steps with a periodic checkpoint after step 2 and a skipped batch before it; then, as after a crash
    once step 4 was logged, resume from the step-2 checkpoint into the same directory: weights, skipped_steps,
    lr, the scheduler, the token counter and metrics.csv (history kept, steps continuous) equal the run's."""
    import shutil

    from lightning.pytorch.callbacks import ModelCheckpoint

    Track = _poison_batch(monkeypatch, bad_batch=1)
    out = tmp_path / "run"

    def callbacks():
        periodic = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step}", auto_insert_metric_name=False,
                                   every_n_train_steps=2, save_top_k=-1)
        return [Track(), ThroughputCallback(), periodic]

    full = train(tiny_cfg(*MAG, "trainer.max_steps=4", f"paths.output_dir={out}"), extra_callbacks=callbacks())
    assert full["skipped_steps"] == 1 and full["global_step"] == 4
    shutil.copy(out / "checkpoints" / "last.ckpt", tmp_path / "full.ckpt")
    rows_full = _rows(out / "csv" / "metrics.csv")
    step2 = out / "checkpoints" / "step2.ckpt"
    assert _ckpt(step2)["titans"]["skipped_steps"] == 1  # the skipped batch came before the checkpoint

    # TensorBoard names an event file by its creation second, host and pid: a resume in the same process within
    # the same second would reuse the first run's file name (a real resume is another process). Wait for the next
    # second so the two runs' files are told apart, as they are in use.
    started = int(time.time())
    while int(time.time()) == started:
        time.sleep(0.02)
    resumed = train(tiny_cfg(*MAG, "trainer.max_steps=4", f"paths.output_dir={out}", f"ckpt_path={step2}"),
                    extra_callbacks=callbacks())
    assert resumed["skipped_steps"] == 1 and resumed["global_step"] == 4 and len(resumed["train/losses"]) == 2
    a, b = _ckpt(tmp_path / "full.ckpt"), _ckpt(resumed["last_ckpt"])
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert b["titans"]["skipped_steps"] == 1 and b["titans"]["batches_seen"] == a["titans"]["batches_seen"] == 5
    lr_a = a["optimizer_states"][0]["param_groups"][0]["lr"]
    assert b["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr_a)  # the schedule went on
    assert b["lr_schedulers"][0]["last_epoch"] == a["lr_schedulers"][0]["last_epoch"] == 4
    assert resumed["train/tokens"] == full["train/tokens"] == 5 * 320  # the counter went on from the checkpoint

    events = (out / "tensorboard").glob("events.out.tfevents.*")  # one file per run; mtimes can tie, so no order
    assert sorted(_tensorboard_steps(e) for e in events) == [[0, 1, 2, 3, 4], [3, 4]]  # the resumed run goes on at 3
    rows_resumed = _rows(out / "csv" / "metrics.csv")
    assert [r[0] for r in rows_resumed] == [r[0] for r in rows_full] == [0, 1, 2, 3, 4]  # continuous, no duplicates
    torch.testing.assert_close([r[1:] for r in rows_resumed], [r[1:] for r in rows_full], rtol=1e-5, atol=1e-6,
                               equal_nan=True)


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
    """A run killed after its checkpoint logged steps it will redo: those rows go, the earlier ones stay."""
    from titans.training.loggers import drop_csv_rows

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.9\n0,2,0.8\n0,3,0.7\n")
    drop_csv_rows(path, 2)
    assert path.read_text().splitlines() == ["epoch,step,train/loss", "0,0,1.0", "0,1,0.9"]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_resumed_wandb_run_keeps_its_id(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))
    ids = []

    class RunId(run_mod.pl.Callback):
        def on_train_start(self, trainer, pl_module):
            ids.append(trainer.logger.experiment.id)

    out = tmp_path / "run"
    first = train(tiny_cfg("logger=wandb", "trainer.max_steps=1", "scheduler.total_steps=2",
                           f"paths.output_dir={out}"), extra_callbacks=[RunId()])
    assert _ckpt(first["last_ckpt"])["titans"]["wandb_id"] == ids[0]
    train(tiny_cfg("logger=wandb", "trainer.max_steps=2", f"paths.output_dir={out}",
                   f"ckpt_path={first['last_ckpt']}"), extra_callbacks=[RunId()])
    assert ids[1] == ids[0]
