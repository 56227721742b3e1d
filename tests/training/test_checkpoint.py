import contextlib
import os
import threading

import pytest
import torch

from titans.training.checkpoint import AtomicCheckpointIO, check_checkpoint, load_model_weights


def test_atomic_save_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"model.w": torch.ones(2)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["model.w"], torch.ones(2))
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        io.save_checkpoint({"bad": threading.Lock()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["model.w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_load_model_weights_checks_names(tmp_path):
    model = torch.nn.Linear(2, 2)
    torch.save({"state_dict": {"model.weight": torch.zeros(2, 2), "model.bias": torch.zeros(2)}}, tmp_path / "a.ckpt")
    load_model_weights(model, tmp_path / "a.ckpt")
    assert model.weight.abs().sum() == 0
    torch.save({"state_dict": {"model.other": torch.zeros(2)}}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError,
                       match=r"init_from=.*does not match the model \(missing 2 weight\(s\) \['bias', 'weight'\]"):
        load_model_weights(model, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path=.*Checkpoints in .*a.ckpt"):
        check_checkpoint(tmp_path / "c.ckpt", "ckpt_path")


def test_an_interrupted_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C (or any exception) in the middle of a checkpoint write: the old file stays, no tmp file is left."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"model.w": torch.ones(2)}}, path)

    def interrupted(obj, f, *args, **kwargs):
        with open(f, "wb") if isinstance(f, str | os.PathLike) else contextlib.nullcontext(f) as out:
            out.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"model.w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["model.w"], torch.ones(2))
