"""Give a pretrained Qwen3 a Titans memory: `patch_qwen3`, `from_pretrained`, `save_memory`, `load_memory`.

    model = patch_qwen3(Qwen3ForCausalLM.from_pretrained(path), "mag", window=512, memory=dict(chunk_size=64))
    out = model(ids, use_cache=True)            # logits [B, T, vocab]; out.past_key_values is a TitansCache
    out = model(more_ids, cache=out.past_key_values)   # continue (`past_key_values=` before transformers 5.24)
    model.generate(ids, max_new_tokens=32)
    out = model(ids, output_memory_aux=True)    # + gates, θ/η/α, surprise, errors in out.past_key_values.memory_aux
    collect_diagnostics(out)                    # {"layer0/gate_mean": ..., ...}

Patching swaps `model.model.layers[i]` for a `TitansDecoderLayer` subclass (base parameter names
unchanged, new ones under `memory.`, `memory_gate.`, `persistent`, `cross_query.`, `longterm_`), stores
the options in `model.config.titans` (so they round-trip through `save_pretrained`) and makes the
inner `Qwen3Model` create a `TitansCache` when it needs a cache.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model
from transformers.utils import ModelOutput

from titans.cache import TitansCache
from titans.compat import cache_kwargs, output_cache, take_cache
from titans.config import TitansConfig
from titans.io import atomic_path
from titans.memory import query_error_cosine
from titans.variants import LAYER_CLASSES, TitansDecoderLayer

__all__ = [
    "LAYER_CLASSES",
    "SUPPORTED_ARCHITECTURES",
    "TitansQwen3Model",
    "apply_freeze",
    "collect_diagnostics",
    "count_trainable_parameters",
    "memory_diagnostics",
    "from_pretrained",
    "load_memory",
    "patch_qwen3",
    "save_memory",
    "titans_layers",
    "unwrap",
]

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)
MEMORY_FILE = "titans_memory.safetensors"
_FINGERPRINT = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "vocab_size")


class TitansQwen3Model(Qwen3Model):
    """diff with Qwen3Model: creates a `TitansCache` (instead of a `DynamicCache`) when a cache is needed,
    upgrades a plain `DynamicCache` passed in (e.g. by `generate`), rejects left padding (the memory would
    learn from pad tokens), skips HF's model-level mask when every layer is patched (the layers build their
    own), and takes `output_memory_aux`: when True, every memory layer leaves what it computed (gate, θ/η/α,
    surprise, errors: `titans.cache.MemoryAux`) in the returned cache's `memory_aux`. The cache also carries
    each memory layer's read to the next one within the forward (cross-layer query); with `use_cache=False`
    a cache for this call only is made for that and not returned."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, output_memory_aux: bool = False, **kwargs):
        # transformers >= 5.24 passes the cache as `cache`, earlier releases as `past_key_values` (titans.compat)
        past_key_values = take_cache(cache, past_key_values, "TitansQwen3Model.forward")
        use = use_cache if use_cache is not None else self.config.use_cache
        if output_memory_aux and not use:
            raise ValueError(
                "output_memory_aux=True needs use_cache=True: the memory's aux comes back on the cache "
                "(out.past_key_values.memory_aux); drop use_cache=False."
            )
        cross_layer = any(getattr(la, "cross_query", None) is not None for la in self.layers)
        if past_key_values is None and (use or cross_layer):
            past_key_values = TitansCache(config=self.config)  # returned only with use_cache
        elif past_key_values is not None:
            TitansCache.upgrade(past_key_values)
        if past_key_values is not None:
            past_key_values.begin_forward(bool(output_memory_aux))
        if isinstance(attention_mask, Tensor) and attention_mask.dim() == 2 and attention_mask.shape[1] > 1:
            # continuing a cache, the columns of the cached tokens were checked when those tokens came (and are
            # written): check the new tokens' columns and the one before them, O(T) per call, not O(tokens so far)
            # per decoded token (`generate` passes the whole mask every step)
            new = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            if past > 0 and attention_mask.shape[1] == past + new:
                attention_mask_new = attention_mask[:, -(new + 1) :]
            else:
                attention_mask_new = attention_mask
            if bool((attention_mask_new[:, 1:] > attention_mask_new[:, :-1]).any()):
                raise ValueError(
                    "attention_mask has left padding or holes; a Titans model writes every token into its memory, "
                    "so batch sequences of equal length or pad on the right (tokenizer.padding_side='right')."
                )
        # HF turns the cache off under gradient checkpointing (its layers would write it twice); patched layers
        # checkpoint functionally and keep it, so when every layer is patched the cache stays on.
        all_patched = all(isinstance(la, TitansDecoderLayer) for la in self.layers)
        if all_patched and not isinstance(attention_mask, dict):
            # Patched layers build their own masks and ignore the model-level one; skip HF's [T, tokens so far]
            # mask, whose size grows with everything the cache has seen (O(L²) over a long stream).
            attention_mask = {kind: None for kind in ("full_attention", "sliding_attention")}
        keep_cache = self.gradient_checkpointing and all_patched
        if keep_cache:
            self.gradient_checkpointing = False
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, use_cache=use_cache,
                                   **cache_kwargs(past_key_values), **kwargs)
        finally:
            if keep_cache:
                self.gradient_checkpointing = True
            if past_key_values is not None:
                past_key_values.end_forward()


def unwrap(model: nn.Module) -> nn.Module:
    """The `Qwen3ForCausalLM` inside a peft wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def titans_layers(model: nn.Module) -> dict[int, TitansDecoderLayer]:
    """Layer index -> patched layer."""
    return {i: layer for i, layer in enumerate(unwrap(model).model.layers) if isinstance(layer, TitansDecoderLayer)}


def _is_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old hub client
        return False


def _load_base(model: Any, **hf_kwargs) -> nn.Module:
    """A `Qwen3ForCausalLM` from a model, a local directory or a hub name (fails fast offline)."""
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, (str, Path)):
        raise TypeError(
            "patch_qwen3(model=...) takes a Qwen3ForCausalLM, a local directory or a hub name; "
            f"got {type(model).__name__}"
        )
    path = Path(model)
    if path.exists():
        return Qwen3ForCausalLM.from_pretrained(str(path), **hf_kwargs)
    try:  # the local hub cache first: no network
        return Qwen3ForCausalLM.from_pretrained(str(model), local_files_only=True, **hf_kwargs)
    except OSError:
        pass
    if _is_offline():
        raise ValueError(
            f"model={str(model)!r} is not a local directory and not in the Hugging Face cache, and the hub is offline "
            "(HF_HUB_OFFLINE). Download it on a machine with internet (huggingface-cli download), pass a local path, "
            "or build a small Qwen3ForCausalLM(Qwen3Config(...))."
        )
    import socket

    try:  # never hang on a machine without internet
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        raise ValueError(
            f"model={str(model)!r} is not a local directory or cached, and huggingface.co is unreachable ({e}). "
            "Pass a local path or set HF_HUB_OFFLINE=1 and use a cached model."
        ) from e
    return Qwen3ForCausalLM.from_pretrained(str(model), **hf_kwargs)


def _check_supported(model: nn.Module) -> None:
    base = unwrap(model)
    if type(base).__name__ not in SUPPORTED_ARCHITECTURES or not isinstance(getattr(base, "model", None), Qwen3Model):
        raise TypeError(
            f"patch_qwen3 supports {SUPPORTED_ARCHITECTURES}, got {type(base).__name__}. To add an architecture, write "
            "decoder-layer subclasses like titans/variants/*.py for its layer class (same attention projections "
            "and RoPE) and register them in titans.patch."
        )


def _make_config(variant: str, options: dict, hidden_size: int) -> TitansConfig:
    known = set(TitansConfig.__dataclass_fields__) - {"variant", "hidden_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"patch_qwen3 got unknown options {unknown}; allowed: {sorted(known)}. "
            "Memory fields (heads, depth, chunk_size, ...) go inside memory=dict(...)."
        )
    cfg = TitansConfig(variant=variant, **options)
    cfg.hidden_size = hidden_size
    cfg.memory_config()  # validates memory fields and window/segment against the chunk size
    return cfg


def patch_qwen3(model: nn.Module | str | Path, variant: str, **options: Any) -> nn.Module:
    """Patch a Qwen3 with a Titans variant and return it.

    Args:
        model: a `Qwen3ForCausalLM`, a local directory, or a hub name (offline: a clear error, no hang).
        variant: "mag", "mal", "mac", or "swa" (sliding window only, the no-memory baseline).
        **options: `TitansConfig` fields: memory (MemoryConfig or dict), layers, memory_layers, window, segment_len,
            num_longterm, mac_memory_input, num_persistent, gate, gate_bias_init, identity_init, cross_layer_query,
            freeze, lora_r, lora_alpha, lora_dropout, lora_targets.
    Returns:
        The same model, patched in place (a peft `PeftModel` around it when freeze="lora"). Inputs
        `input_ids [B, T]` -> logits `[B, T, vocab]` as before.
    """
    base = _load_base(model)
    _check_supported(base)
    base = unwrap(base)
    if getattr(base.config, "titans", None):
        raise ValueError(
            "this model is already patched (model.config.titans is set); load a patched checkpoint with "
            "titans.from_pretrained(path), or patch a plain Qwen3ForCausalLM."
        )
    if variant not in LAYER_CLASSES:
        raise ValueError(f"patch_qwen3(variant={variant!r}): allowed {tuple(LAYER_CLASSES)}")
    cfg = _make_config(variant, options, base.config.hidden_size)
    layers = base.model.layers
    indices = cfg.layer_indices(len(layers))
    with_memory = cfg.memory_layer_indices(len(layers))
    for i in indices:
        layer_cfg = cfg
        if cfg.has_memory and i not in with_memory:  # memory_layers: the same windowed attention, no memory
            # its gate is never used (no memory): the default form, so a MAG-only gate (convex) stays valid
            layer_cfg = dataclasses.replace(cfg, variant="swa", memory={}, memory_layers="all", gate="sigmoid")
        old = layers[i]
        ref = next(old.parameters())
        with torch.device(ref.device):
            new = LAYER_CLASSES[layer_cfg.variant](base.config, i, layer_cfg)
        missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
        new_names = {n for n, _ in [*new.titans_named_parameters(), *new.titans_named_buffers()]}
        if unexpected or set(missing) - new_names:
            raise TypeError(
                f"layer {i} ({type(old).__name__}) does not match Qwen3DecoderLayer: unexpected {unexpected}, "
                f"missing {sorted(set(missing) - new_names)}"
            )
        new.to(dtype=ref.dtype)
        new.gradient_checkpointing = bool(getattr(old, "gradient_checkpointing", False))
        new.train(old.training)
        layers[i] = new
    first = layers[(with_memory or indices)[0]]
    if getattr(first, "cross_query", None) is not None:  # the first memory layer has no previous read
        first.cross_query = None
    _own_config(base)
    base.config.titans = cfg.to_dict()
    base.model.__class__ = TitansQwen3Model
    _register_output_capture(base.model)
    return _apply_freeze(base, cfg)


def _own_config(model: nn.Module) -> None:
    """Give the model its own copy of its config before writing `titans` into it: a config object shared
    with other models (`Qwen3ForCausalLM(cfg)` twice) must not make them look patched."""
    old = model.config
    new = copy.deepcopy(old)
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new


def _register_output_capture(model: nn.Module) -> None:
    """`output_hidden_states` hooks are looked up by the model's class name; register the swapped class."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # pragma: no cover - other transformers versions
        return
    _CAN_RECORD_REGISTRY[model] = model._can_record_outputs


def apply_freeze(model: nn.Module, freeze: str) -> nn.Module:
    """Choose what trains after patching (e.g. once a checkpoint's weights are loaded); returns the model (a peft
    `PeftModel` around it for "lora") and records `freeze` in `model.config.titans["freeze"]`.

    freeze: "memory" (only the patch's parameters), "lora" (LoRA adapters on the base, options from
    `model.config.titans`, plus the patch's parameters) or "none" (everything). A plain (unpatched) model
    takes "none" or "lora"; "memory" needs a patch with memory parameters.
    """
    from titans.config import FREEZE

    if freeze not in FREEZE:
        raise ValueError(f"freeze={freeze!r} is not allowed; allowed: {FREEZE}.")
    base = unwrap(model)
    if base is not model:
        raise ValueError("apply_freeze takes the patched model before any freeze wrapped it (not a PeftModel).")
    titans = getattr(base.config, "titans", None)
    cfg = TitansConfig(**{**titans, "freeze": freeze}) if titans else TitansConfig(variant="swa", window=1,
                                                                                    freeze=freeze)
    if freeze == "memory" and not _titans_state_dict(base):
        variant = titans.get("variant") if titans else None
        raise ValueError(f"freeze='memory' trains only the memory, but the model (variant={variant!r}) has no memory "
                         f"parameters; use a memory variant (memory=mac|mag|mal), or freeze='none' or 'lora'.")
    model = _apply_freeze(base, cfg)
    if titans:
        base.config.titans = {**titans, "freeze": freeze}
    return model


def _apply_freeze(model: nn.Module, cfg: TitansConfig) -> nn.Module:
    new_params = [p for layer in titans_layers(model).values() for _, p in layer.titans_named_parameters()]
    if cfg.freeze == "none":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if cfg.freeze == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets))
        model = get_peft_model(model, lora)  # freezes everything but the adapters
    for p in new_params:
        p.requires_grad_(True)
    return model


def count_trainable_parameters(model: nn.Module) -> int:
    """The number of scalars the optimizer will train: every parameter with `requires_grad`, each shared (tied)
    tensor once. After `patch_qwen3(..., freeze="memory")` that is the memory, gate and persistent tokens."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)


def memory_diagnostics(source: Any) -> dict[str, Tensor]:
    """Detached per-layer scalars (0-dim tensors, no host sync) from a forward run with `output_memory_aux=True`.

    source: the model output, or its `TitansCache`. Keys `layer<i>/<name>` per memory layer, from the layer's
    last memory call of that forward (MAC: its last segment): gate_mean, gate_std (0 without a gate),
    scale_abs_mean, surprise_norm (mean inner-gradient norm over written tokens), lr_mean (θ),
    momentum_decay_mean (η), forget_mean (α), memory_weight_norm (‖M‖ after the call, mean over the batch),
    query_grad_cos (mean cos(q_t, M(k_t) − v_t) over written tokens; MemoryMAG §6.1: should rise in training).
    Empty when the forward was not asked for aux.
    """
    cache = source
    if not isinstance(cache, TitansCache):
        cache = output_cache(source) if isinstance(source, ModelOutput) else None
        if not isinstance(cache, TitansCache):
            raise TypeError(
                "memory_diagnostics / collect_diagnostics read a forward's output (or its TitansCache): "
                "out = model(ids, output_memory_aux=True); collect_diagnostics(out). "
                f"Got {type(source).__name__}{' without a TitansCache' if cache is None else ''}."
            )
    out = {}
    with torch.no_grad():
        for i, records in sorted(cache.memory_aux.items()):
            if not records:
                continue
            r = records[-1]
            aux = r.memory
            surprise = aux["surprise"]
            finite = torch.isfinite(surprise)
            cos, written = query_error_cosine(aux)
            g = r.gate.detach().float() if r.gate is not None else None
            wsq = sum(w.detach().float().pow(2).flatten(1).sum(1) for w in r.state.weights.values())  # (B,)
            zero = surprise.new_zeros((), dtype=torch.float32)
            values = {
                "gate_mean": g.mean() if g is not None else zero + 1.0,
                "gate_std": g.std() if g is not None and g.numel() > 1 else zero,
                "scale_abs_mean": r.scale.detach().float().abs().mean(),
                "surprise_norm": torch.where(finite, surprise, 0).sum() / finite.sum().clamp_min(1),
                "lr_mean": aux["lr"].detach().float().mean(),
                "momentum_decay_mean": aux["momentum_decay"].detach().float().mean(),
                "forget_mean": aux["forget"].detach().float().mean(),
                "memory_weight_norm": wsq.sqrt().mean(),
                "query_grad_cos": cos.sum() / written.sum().clamp_min(1),
            }
            out.update({f"layer{i}/{k}": v.float() for k, v in values.items()})
    return out


def collect_diagnostics(source: Any) -> dict[str, float]:
    """`memory_diagnostics(source)` as floats (one host sync): `{"layer3/gate_mean": 0.05, ...}`.

    source: the output of `model(ids, output_memory_aux=True)`, its cache, or a dict of 0-dim tensors
    (what `memory_diagnostics` returned earlier)."""
    values = source if isinstance(source, dict) and not isinstance(source, ModelOutput) else memory_diagnostics(source)
    if not values:
        return {}
    names = list(values)
    return dict(zip(names, torch.stack([values[k].detach().float().to("cpu") for k in names]).tolist()))


# ---------------------------------------------------------------------------------------------- save / load


def _titans_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """What the patch adds: its parameters and buffers (e.g. `qk_center`'s running means)."""
    return {
        f"model.layers.{i}.{name}": p
        for i, layer in titans_layers(model).items()
        for name, p in [*layer.titans_named_parameters(), *layer.titans_named_buffers()]
    }


def _fingerprint(config) -> dict[str, Any]:
    return {k: getattr(config, k, None) for k in _FINGERPRINT}


def _options(titans: dict) -> tuple[str, dict]:
    opts = dict(titans)
    variant = opts.pop("variant")
    opts.pop("hidden_size", None)
    for key in TitansConfig._legacy_keys:  # switches of earlier releases found in saved configs
        opts.pop(key, None)
    return variant, opts


def _read_tensors(path: Path, keys: set[str]) -> dict[str, Tensor]:
    """Tensors `keys` from a saved model directory (single or sharded safetensors)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({weight_map[k] for k in keys if k in weight_map})
    else:
        files = ["model.safetensors"]
    out = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for k in f.keys():
                if k in keys:
                    out[k] = f.get_tensor(k)
    return out


def _load_titans_tensors(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    own = _titans_state_dict(model)
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"{source} lacks memory tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for k, p in own.items():
            t = tensors[k]
            if t.shape != p.shape:
                raise ValueError(
                    f"{source}: {k} has shape {tuple(t.shape)} but the patched model needs {tuple(p.shape)}"
                )
            p.copy_(t.to(dtype=p.dtype, device=p.device))


def from_pretrained(path: str | Path, freeze: str | None = None, **hf_kwargs: Any) -> nn.Module:
    """Load a patched checkpoint written by `model.save_pretrained(path)` (base + memory, Titans config).

    `freeze` overrides the saved freeze mode; `hf_kwargs` go to `Qwen3ForCausalLM.from_pretrained`
    (e.g. dtype). Returns the patched model with identical logits.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"from_pretrained({str(path)!r}): not a saved model directory (no config.json)")
    if not any((path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise ValueError(f"from_pretrained({str(path)!r}): no model.safetensors (or its index); titans loads "
                         f"safetensors only, never pickled weights (pytorch_model.bin). Save with save_pretrained.")
    titans = json.loads((path / "config.json").read_text()).get("titans")
    if not titans:
        raise ValueError(
            f"{path} is a plain model (no 'titans' in config.json); patch it with titans.patch_qwen3(path, variant)"
        )
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the memory keys are "unexpected" for the plain class: loaded below
    try:
        model = Qwen3ForCausalLM.from_pretrained(str(path), **hf_kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.titans = None
    variant, opts = _options(titans)
    if freeze is not None:
        opts["freeze"] = freeze
    model = patch_qwen3(model, variant, **opts)
    keys = set(_titans_state_dict(model))
    _load_titans_tensors(model, _read_tensors(path, keys), str(path))
    return model


def save_memory(model: nn.Module, path: str | Path) -> Path:
    """Write only the memory parameters and the Titans config to `path/titans_memory.safetensors` (atomic).

    Returns the file written. `load_memory(base_model, path)` puts them on a fresh base model.
    """
    from safetensors.torch import save_file

    base = unwrap(model)
    titans = getattr(base.config, "titans", None)
    if not titans:
        raise ValueError("save_memory needs a patched model (model.config.titans is not set); use patch_qwen3 first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    target = path / MEMORY_FILE
    tensors = {k: v.detach().contiguous() for k, v in _titans_state_dict(base).items()}
    meta = {"titans_config": json.dumps(titans), "base": json.dumps(_fingerprint(base.config))}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return target


def load_memory(base_model: nn.Module | str | Path, path: str | Path, freeze: str | None = None) -> nn.Module:
    """Patch `base_model` (a plain Qwen3 or its path) with the memory saved by `save_memory` in `path`.

    Raises ValueError when the base model's shape differs from the one the memory was trained on.
    """
    from safetensors import SafetensorError, safe_open

    file = Path(path)
    if file.is_dir():
        file = file / MEMORY_FILE
    if not file.exists():
        raise ValueError(f"load_memory: {file} does not exist; write it with titans.save_memory(model, dir)")
    try:
        opened = safe_open(str(file), framework="pt")
    except SafetensorError as e:  # a pickle, a truncated file, ...: never unpickled, refused
        raise ValueError(f"load_memory: {file} is not a safetensors file written by titans.save_memory ({e})") from e
    with opened as f:
        meta = f.metadata() or {}
        if "titans_config" not in meta:
            raise ValueError(f"{file} was not written by titans.save_memory (no 'titans_config' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    base = _load_base(base_model)
    _check_supported(base)
    want = json.loads(meta["base"])
    have = _fingerprint(unwrap(base).config)
    diff = {k: (want[k], have[k]) for k in want if want[k] != have.get(k)}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs model {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"load_memory: {file} was trained on a different base model ({detail}); use the same base.")
    variant, opts = _options(json.loads(meta["titans_config"]))
    if freeze is not None:
        opts["freeze"] = freeze
    model = patch_qwen3(base, variant, **opts)
    _load_titans_tensors(model, tensors, str(file))
    return model
