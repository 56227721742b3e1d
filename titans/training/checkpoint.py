"""Checkpoints: atomic writes (`titans.io`), and the one loader of the code base.

Every checkpoint we read goes through `read_checkpoint` (`torch.load(weights_only=True)`: tensors and plain
containers only, nothing in the file can run code), and every copy of weights into a model through
`load_model_weights` (`init_from`, `evaluate.py checkpoint=`, the CPU proof). A checkpoint carries the
architecture it was trained with (`model_arch`: model shape, variant, window, memory config) under
`checkpoint["titans"]["arch"]`; loading compares it with the model built from the composed config and a
difference is a ValueError naming both values, unless `allow_arch_mismatch` asks for a deliberate transfer.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from titans.config import TitansConfig
from titans.io import atomic_path

log = logging.getLogger(__name__)

# Qwen3Config fields that fix the shape of the weights (and what they mean: the tokenizer's vocabulary)
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings")
# TitansConfig fields that say what trains, not what the model is: they may change between curriculum stages
NOT_ARCH = ("freeze", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "diagnostics", "hidden_size")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` through `titans.io.atomic_path`: a reader never sees a half-written checkpoint, and a crash
    leaves the previous file intact. Loads weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options.")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # diff with TorchCheckpointIO: always weights-only (Lightning's default would unpickle anything)
        return read_checkpoint(path, "ckpt_path", map_location=map_location)


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


def read_checkpoint(path: str | os.PathLike, key: str = "checkpoint", map_location: Any = "cpu") -> dict:
    """The checkpoint at `path` as a dict, read with `torch.load(weights_only=True)`.

    A file holding other pickled objects (which could run code when unpickled) is refused with a
    ValueError naming `key`; so is a file that is not a torch checkpoint.
    """
    p = check_checkpoint(path, key)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{key}={str(path)!r} holds pickled Python objects besides tensors and plain containers; "
                         f"titans loads checkpoints weights-only (torch.load(weights_only=True)) so that no file can "
                         f"run code, and refuses this one ({first}). Only load checkpoints you trust; a titans "
                         f"training checkpoint never needs more.") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{key}={str(path)!r} is not a readable torch checkpoint ({type(e).__name__}: "
                         f"{str(e)[:200]}); give a Lightning .ckpt written by train.py.") from e
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{key}={str(path)!r} holds a {type(ckpt).__name__}, not a checkpoint dict; give a "
                         f"Lightning .ckpt written by train.py.")
    return dict(ckpt)


def model_arch(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint's weights mean: the model's shape and its Titans patch (variant, window, the full
    memory config, layers, ...), without the settings of what trains (freeze, LoRA). Plain containers."""
    from titans.patch import unwrap

    config = getattr(unwrap(model), "config", None)
    shape = {k: getattr(config, k, None) for k in SHAPE_KEYS}
    titans = getattr(config, "titans", None)
    if not titans:
        return {"model": shape, "memory": None}
    memory = {k: v for k, v in dict(titans).items() if k not in NOT_ARCH}
    full = TitansConfig(**{k: v for k, v in dict(titans).items() if k != "hidden_size"})
    full.hidden_size = shape["hidden_size"]
    memory["memory"] = full.memory_config().to_dict() if full.has_memory else {}
    return {"model": shape, "memory": _plain(memory)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) and v else {f"{prefix}{k}": v})
    return out


_MISSING = object()


def _field_default(key: str) -> Any:
    """The dataclass default of the config field a flat arch key names (`memory.memory.<MemoryConfig field>`,
    `memory.<TitansConfig field>`), or _MISSING."""
    import dataclasses

    from titans.memory import MemoryConfig

    parts = key.split(".")
    cls = MemoryConfig if parts[:2] == ["memory", "memory"] and len(parts) == 3 else (
        TitansConfig if parts[0] == "memory" and len(parts) == 2 else None)
    if cls is None:
        return _MISSING
    for f in dataclasses.fields(cls):
        if f.name == parts[-1]:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return _MISSING


def arch_differences(saved: Mapping | None, built: Mapping) -> list[str]:
    """'memory.variant: checkpoint 'mag' vs this run 'mal'' for every field that differs (empty if equal).

    A field the checkpoint does not record (it was added to the config later) counts as its default: a
    checkpoint written before a new option existed loads into a run that leaves the option at its default."""
    a, b = _flat(saved or {}), _flat(built)
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k):
            continue
        if k not in a and saved and b.get(k) == _field_default(k):
            continue
        out.append(f"{k}: checkpoint {a.get(k)!r} vs this run {b.get(k)!r}")
    return out


def check_arch(ckpt: Mapping, model: nn.Module, key: str, path: str | os.PathLike,
               allow_arch_mismatch: bool = False, switch: str = "allow_arch_mismatch") -> list[str]:
    """Compare the architecture recorded in `ckpt` with `model`'s; a ValueError naming both values on a
    difference (a warning with `allow_arch_mismatch`). Returns the differences. A checkpoint that records
    none (written before titans recorded it) is not compared: the weight names and shapes still are."""
    saved = (ckpt.get("titans") or {}).get("arch")
    if saved is None:
        log.warning("%s=%s records no architecture (an older checkpoint); only weight names and shapes are "
                    "checked", key, path)
        return []
    diff = arch_differences(saved, model_arch(model))
    if diff and not allow_arch_mismatch:
        raise ValueError(f"{key}={str(path)!r} was trained with another architecture than this run builds: "
                         f"{'; '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}. Use the same model=/memory= "
                         f"(and overrides) as the run that wrote it, or set {switch}=true to transfer the "
                         f"weights on purpose.")
    if diff:
        log.warning("%s=%s: architecture differs (%s); loading anyway (%s=true)", key, path, "; ".join(diff), switch)
    return diff


def _find_prefix(ckpt_keys: list[str], model_keys: set[str]) -> str:
    """The prefix the Lightning module put before the model's parameter names (`model.`, '' when none)."""
    for anchor in ("model.embed_tokens.weight", "lm_head.weight"):
        if anchor in model_keys:
            for k in ckpt_keys:
                if k.endswith(anchor):
                    return k[: -len(anchor)]
    return "model." if any(k.startswith("model.") for k in ckpt_keys) else ""


def load_model_weights(model: nn.Module, path: str | os.PathLike, key: str = "init_from",
                       allow_arch_mismatch: bool = False, switch: str = "allow_arch_mismatch") -> dict[str, list[str]]:
    """Copy the model weights of a training checkpoint (`state_dict`, under the LitModule's `model.` prefix)
    into `model`, read weights-only; `key` names the config key in errors.

    The checkpoint's recorded architecture must equal `model`'s (see `check_arch`) and its weights must
    match by name and shape; otherwise a ValueError names the differences. With `allow_arch_mismatch`
    (config `switch`) the weights whose name and shape match are copied and the rest reported in a warning.
    Returns {"missing": [...], "unexpected": [...]} (both empty unless `allow_arch_mismatch`).
    """
    ckpt = read_checkpoint(path, key)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{key}={str(path)!r} holds no model weights (no state_dict); give a Lightning .ckpt "
                         f"written by train.py.")
    check_arch(ckpt, model, key, path, allow_arch_mismatch, switch)
    own = model.state_dict()
    prefix = _find_prefix(list(state), set(own))
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(weights))
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if (missing or unexpected or shapes) and not allow_arch_mismatch:
        detail = "; ".join(s for s in (
            f"missing {len(missing)} weight(s) {missing[:4]}" if missing else "",
            f"unexpected {len(unexpected)} weight(s) {unexpected[:4]}" if unexpected else "",
            "shapes differ: " + ", ".join(f"{k} {tuple(weights[k].shape)} in the checkpoint vs "
                                          f"{tuple(own[k].shape)} in the model" for k in shapes[:3]) if shapes else "",
        ) if s)
        raise ValueError(f"{key}={str(path)!r} does not match the model ({detail}); use the same model/memory "
                         f"config as the run that wrote it, or set {switch}=true to copy only what matches.")
    loadable = {k: v for k, v in weights.items() if k in own and k not in shapes}
    if missing or unexpected or shapes:
        log.warning("%s=%s: copied %d weights; not in the checkpoint %s, not in the model %s, other shapes %s",
                    key, path, len(loadable), missing[:8], unexpected[:8], shapes[:8])
    model.load_state_dict(loadable, strict=False)
    return {"missing": missing, "unexpected": unexpected + shapes}
