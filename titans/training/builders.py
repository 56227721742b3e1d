"""Builders: config mappings -> finished parts (model + tokenizer), so library classes never see a DictConfig.

`build_model(model_cfg, memory_cfg)` is shared by training and evaluation:

    model_cfg  (conf/model/*.yaml)   name, pretrained (hub name / local dir / null), tokenizer, dtype,
                                     seed, arch (Qwen3Config fields for a locally built random model)
    memory_cfg (conf/memory/*.yaml)  variant (null | mac | mag | mal), window, and the other keyword
                                     options of `titans.patch_qwen3` (memory=MemoryConfig fields, layers,
                                     segment_len, num_longterm, num_persistent, ...); null values are
                                     left to patch_qwen3's defaults. `memory_impl` (optional): the dotted
                                     path of a function `model -> model` applied right after patching,
                                     before weights are loaded and `freeze` applied: how a benchmark swaps
                                     in another implementation of the memory (the CPU proof's peer row:
                                     `benchmarks.peers.titans_pytorch.use_titans_pytorch_memory`) without
                                     this package importing it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from titans.config import MEMORY_VARIANTS

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
MODEL_KEYS = {"name", "pretrained", "tokenizer", "dtype", "seed", "arch"}
MEMORY_KEYS_RESERVED = {"name", "variant", "memory_impl"}


def to_plain(cfg: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or mapping -> plain python containers; None stays None."""
    if cfg is None:
        return None
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def _check_keys(group: str, cfg: dict, allowed: set[str]) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{group} has unknown key(s) {unknown}; allowed: {sorted(allowed)}. "
                         f"Remove them or fix the spelling in conf/{group}/*.yaml or the override.")


def resolve_dtype(value: str | torch.dtype | None, key: str = "model.dtype") -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' (or short forms) -> torch dtype; None / 'auto' -> None."""
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return None if value in (None, "auto") else value
    if value not in DTYPES:
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {sorted(DTYPES)} or 'auto'/null.")
    return DTYPES[value]


def build_tokenizer(model_cfg: Mapping):
    """The model's tokenizer: `model.tokenizer` (builtin 'byte'/'qwen3', local dir or hub name),
    defaulting to `model.pretrained`."""
    from titans.tokenizers import load_tokenizer

    cfg = to_plain(model_cfg)
    name = cfg.get("tokenizer") or cfg.get("pretrained")
    if not name:
        raise ValueError("model.tokenizer is null and model.pretrained is null; set model.tokenizer "
                         "(e.g. 'byte' for the tiny model, or a hub name / local directory).")
    return load_tokenizer(name)


def build_base_model(model_cfg: Mapping, tokenizer=None) -> nn.Module:
    """An unpatched Qwen3ForCausalLM.

    `model.pretrained` set: `from_pretrained` (hub name or local directory). Otherwise a random model
    from `model.arch` (Qwen3Config fields; `vocab_size` defaults to the tokenizer's length) seeded with
    `model.seed`, saved and re-loaded through `save_pretrained`/`from_pretrained` in a temporary
    directory so the real loading path runs.
    """
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    cfg = to_plain(model_cfg)
    _check_keys("model", cfg, MODEL_KEYS)
    dtype = resolve_dtype(cfg.get("dtype"))
    pretrained = cfg.get("pretrained")
    if pretrained:
        check_pretrained(pretrained)
        kwargs = {"dtype": dtype} if dtype is not None else {"dtype": "auto"}
        return AutoModelForCausalLM.from_pretrained(pretrained, **kwargs)
    arch = dict(cfg.get("arch") or {})
    if not arch:
        raise ValueError("model.pretrained is null and model.arch is empty; give a hub name / local directory "
                         "in model.pretrained or Qwen3Config fields in model.arch (see conf/model/qwen3_tiny.yaml).")
    if arch.get("vocab_size") is None:
        if tokenizer is None:
            raise ValueError("model.arch.vocab_size is null and no tokenizer was given to size it; set "
                             "model.arch.vocab_size or pass the tokenizer.")
        arch["vocab_size"] = len(tokenizer)
    if tokenizer is not None:
        arch.setdefault("eos_token_id", tokenizer.eos_token_id)
        arch.setdefault("pad_token_id", tokenizer.pad_token_id)
    try:
        config = Qwen3Config(**arch)
    except Exception as e:  # noqa: BLE001 - TypeError/ValueError/huggingface_hub StrictDataclassError
        raise ValueError(f"model.arch={arch} is not a valid Qwen3Config: {e}. Fix the field in "
                         f"conf/model/*.yaml or the override.") from e
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(int(cfg.get("seed") or 0))
        model = Qwen3ForCausalLM(config)
    with tempfile.TemporaryDirectory(prefix="titans-tiny-") as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        model = Qwen3ForCausalLM.from_pretrained(tmp, dtype=dtype or torch.float32)
    return model


@contextlib.contextmanager
def quiet_transformers():
    """No "Writing model shards" / "Loading weights" bars or info lines from transformers inside the block
    (the tiny model's save/load round trip); the previous settings come back afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_pretrained(pretrained: str) -> None:
    """`model.pretrained` written as a path (absolute, ./, ../, ~, or more than one '/') must exist: a
    ValueError saying so, not the hub's "Repo id must be in the form ..." for a mistyped directory."""
    text = str(pretrained)
    looks_like_path = (os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1
                       or os.sep != "/" and os.sep in text)
    if looks_like_path and not Path(text).expanduser().exists():
        raise ValueError(f"model.pretrained={text!r} is a path that does not exist; give an existing directory "
                         f"written by save_pretrained, a hub name (e.g. Qwen/Qwen3-0.6B), or null to build "
                         f"model.arch locally.")


def memory_options(memory_cfg: Mapping | None) -> tuple[str | None, dict]:
    """(variant for patch_qwen3 or None, its keyword options) from a memory config.

    `variant: null` with `window: null` -> (None, {}) (plain model); `variant: null` with an int
    window -> ("swa", {"window": w}), the sliding-window-only baseline.
    """
    cfg = to_plain(memory_cfg) or {}
    variant = cfg.get("variant")
    options = {k: v for k, v in cfg.items() if k not in MEMORY_KEYS_RESERVED and v is not None}
    if variant is None:
        extra = sorted(set(options) - {"window"})
        if extra:
            raise ValueError(f"memory.variant=null (no memory) but memory has {extra}; those options need a "
                             f"variant: set memory.variant to one of {MEMORY_VARIANTS} or remove them.")
        window = options.get("window")
        if window is None:
            return None, {}
        if not isinstance(window, int) or window <= 0:
            raise ValueError(f"memory.window={window!r} is not allowed; allowed: null (full attention) or an int > 0.")
        return "swa", {"window": window}
    if variant not in MEMORY_VARIANTS:
        raise ValueError(f"memory.variant={variant!r} is not allowed; allowed: null (no memory) or one of "
                         f"{MEMORY_VARIANTS}. Pick a conf/memory option: none, mac, mag, mal.")
    return variant, options


def resolve_memory_impl(path: Any) -> Callable[[nn.Module], nn.Module]:
    """`memory.memory_impl`: the dotted path `package.module.function` of a function `model -> model`, imported."""
    allowed = "a dotted path 'package.module.function' of a function model -> model, or null"
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ValueError(f"memory.memory_impl={path!r} is not allowed; allowed: {allowed}.")
    module_name, _, name = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"memory.memory_impl={path!r} cannot be imported ({type(e).__name__}: {e}); allowed: "
                         f"{allowed}. Check the spelling and that its package is installed.") from e
    if not callable(fn):
        raise ValueError(f"memory.memory_impl={path!r} is a {type(fn).__name__}, not a function; allowed: {allowed}.")
    return fn


def default_freeze(variant: str | None) -> str:
    """'memory' for a memory variant (the backbone stays as pretrained), 'none' otherwise."""
    return "memory" if variant in MEMORY_VARIANTS else "none"


def build_model(model_cfg: Mapping, memory_cfg: Mapping | None = None, freeze: str | None = None,
                init_from: str | None = None, allow_arch_mismatch: bool = False):
    """(model, tokenizer): the base Qwen3 (loaded or built), patched with the memory variant.

    Args:
        model_cfg: a `conf/model` mapping (DictConfig or dict).
        memory_cfg: a `conf/memory` mapping; None or `variant: null` -> no memory (a sliding-window-only
            model when `window` is set).
        freeze: what trains ('memory' | 'lora' | 'none'); None = 'memory' with memory, 'none' without.
            Applied by `titans.patch.apply_freeze`, which records it in `model.config.titans["freeze"]`.
        init_from: a training checkpoint whose model weights are loaded before `freeze` is applied
            (so a LoRA stage can start from a stage without LoRA); its recorded architecture must equal
            this model's unless `allow_arch_mismatch` (then the weights that match are copied).
    Returns:
        model: a `Qwen3ForCausalLM` (`model(input_ids [B, T], cache=cache)` -> logits
            `[B, T, vocab]`), tokenizer: a HF tokenizer.
    """
    from titans.patch import apply_freeze, patch_qwen3

    variant, options = memory_options(memory_cfg)
    impl = (to_plain(memory_cfg) or {}).get("memory_impl")
    if impl is not None and variant not in MEMORY_VARIANTS:
        raise ValueError(f"memory.memory_impl={impl!r} replaces the memory, but memory.variant="
                         f"{(to_plain(memory_cfg) or {}).get('variant')!r} has none; use one of {MEMORY_VARIANTS} "
                         f"or set memory.memory_impl=null.")
    hook = resolve_memory_impl(impl) if impl is not None else None
    tokenizer = build_tokenizer(model_cfg)
    model = build_base_model(model_cfg, tokenizer)
    if variant is not None:
        model = patch_qwen3(model, variant, **{**options, "freeze": "none"})  # frozen below, after init_from
    if hook is not None:  # another memory implementation (benchmarks), before weights are loaded into it
        model = hook(model)
    if init_from is not None:
        from titans.training.checkpoint import load_model_weights

        load_model_weights(model, init_from, "init_from", allow_arch_mismatch=allow_arch_mismatch)
    model = apply_freeze(model, freeze or default_freeze(variant))
    return model, tokenizer
