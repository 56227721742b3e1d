"""Checkpoint I/O: atomic writes (tmp file + os.replace) and loading model weights to chain curriculum stages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to `<path>.tmp-<pid>` in the same directory, fsync, then `os.replace`: a reader never
    sees a half-written checkpoint, and a crash leaves the previous file intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options.")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def check_checkpoint(path: str | os.PathLike | None, key: str) -> Path | None:
    """None stays None; a missing file -> ValueError naming the config key and the fix."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        hint = ""
        if p.parent.is_dir():
            found = sorted(str(x) for x in p.parent.glob("*.ckpt"))
            hint = f" Checkpoints in {p.parent}: {found}." if found else f" {p.parent} holds no .ckpt files."
        raise ValueError(f"{key}={str(path)!r} does not exist.{hint} Point {key} at an existing checkpoint "
                         f"(e.g. <previous run's paths.output_dir>/checkpoints/last.ckpt) or set {key}=null.")
    return p


def load_model_weights(model: nn.Module, path: str | os.PathLike, key: str = "init_from") -> dict[str, list[str]]:
    """Copy the `model.` weights of a Lightning checkpoint into `model` (loaded with weights_only=True).

    The checkpoint and the model must have the same architecture (same memory variant and layers);
    otherwise a ValueError lists the missing / unexpected names. Returns {"missing": [], "unexpected": []}.
    """
    p = check_checkpoint(path, key)
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ValueError(f"{key}={str(path)!r} holds no `model.` weights; it is not a titans training checkpoint.")
    result = model.load_state_dict(weights, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(f"{key}={str(path)!r} does not match the model: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}; use the same model/memory config as the run that wrote it.")
    return {"missing": missing, "unexpected": unexpected}
