"""`TitansCache`: a Hugging Face `DynamicCache` that also carries each patched layer's memory state.

A patched decoder layer keeps, in its `TitansCacheLayer`:
    keys, values  `[B, kv_heads, n, head_dim]` after RoPE: the last window-1 tokens (MAG/MAL/SWA), the
                  tokens of the current segment and their long-term tokens (MAC), or all tokens (no window)
    memory        the `MemoryState` of its neural memory (weights, momentum, unfinished chunk, offset)
    extra         variant-specific tensors (MAC: the memory weights at the current segment's start)
    cumulative_length  tokens seen so far (the position of the next token)
Unpatched layers keep Hugging Face's own cache layers. The layers update functionally: a forward reads
a `LayerState`, computes a new one and writes it back, so activation checkpointing can recompute.

What the model reports comes back on the cache too: `model(ids, output_memory_aux=True)` fills
`out.past_key_values.memory_aux` (layer index -> the `MemoryAux` of each memory call of that forward:
gate, θ/η/α, surprise, errors, the state after the call), and `titans.patch.collect_diagnostics(out)`
turns it into per-layer scalars. Within one forward the cache also hands the last memory read to the
next patched layer (cross-layer query refinement); nothing of this is kept on the modules.

`detach_cache` cuts the autograd graph (end of a bptt window) of a `TitansCache` or any `DynamicCache`;
`save_cache` / `load_cache` write and read the whole cache through safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from titans.io import atomic_path
from titans.memory import MemoryState

__all__ = ["LayerState", "MemoryAux", "TitansCache", "TitansCacheLayer", "detach_cache", "load_cache", "save_cache"]


@dataclass
class LayerState:
    """What one patched layer carries from one call to the next (see module docstring for shapes)."""

    keys: Tensor | None = None
    values: Tensor | None = None
    memory: MemoryState | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    offset: int = 0  # tokens seen before this call


@dataclass
class MemoryAux:
    """What one memory call of a patched layer reports when the forward is asked (`output_memory_aux=True`).

    gate:   g `[B, T, D]` as it mixed the memory into the residual stream (with its graph); None for gate="none".
    scale:  the gate's per-channel scale `[D]`.
    memory: the `NeuralMemory`'s aux dict (`NeuralMemory.forward(..., return_aux=True)`): queries, keys, values,
            retrieved, errors `[B, H, T, head_dim]` (errors with their graph), lr (θ), momentum_decay (η),
            forget (α), surprise `[B, H, T]`.
    state:  the memory state after the call.
    """

    gate: Tensor | None
    scale: Tensor
    memory: dict[str, Tensor]
    state: MemoryState


class TitansCacheLayer(DynamicLayer):
    """Cache layer of a patched decoder layer: bounded KV + memory state + extras (see module docstring)."""

    is_sliding = False  # the model-level masks of unpatched layers are sized as for a full layer
    is_croppable = False

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.cumulative_length = 0
        self.memory: MemoryState | None = None
        self.extra: dict[str, Tensor] = {}

    def get_state(self) -> LayerState:
        return LayerState(self.keys if self.is_initialized else None, self.values if self.is_initialized else None,
                          self.memory, dict(self.extra), self.cumulative_length)

    def set_state(self, state: LayerState, new_tokens: int) -> None:
        """Store the state after a call that saw `new_tokens` more tokens."""
        if state.keys is not None:
            self.keys, self.values = state.keys, state.values
            self.dtype, self.device = state.keys.dtype, state.keys.device
            self.is_initialized = True
        self.memory = state.memory
        self.extra = dict(state.extra)
        self.cumulative_length = state.offset + new_tokens

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        raise RuntimeError(
            "TitansCacheLayer belongs to a patched Titans layer, which manages its own keys/values; "
            "an unpatched attention layer must not update it."
        )

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self.memory = None
        self.extra = {}

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "TitansCache cannot be cropped: the memory has already learned from those tokens. "
            "Assisted/speculative decoding is not supported with a Titans model; use plain generate()."
        )

    def _map(self, fn) -> None:
        if self.is_initialized and self.keys is not None:
            self.keys, self.values = fn(self.keys), fn(self.values)
        if self.memory is not None:
            self.memory = self.memory._map(fn)
        self.extra = {k: fn(v) for k, v in self.extra.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def detach(self) -> None:
        self._map(lambda t: t.detach())


class TitansCache(DynamicCache):
    """A `DynamicCache` whose patched layers are `TitansCacheLayer`s (KV + memory state).

    `TitansCache(config)` builds Hugging Face's layers for the unpatched decoder layers (from
    `config.layer_types`) and `TitansCacheLayer`s for the layers listed in `config.titans`. A patched
    model creates one by itself on `model(ids, use_cache=True)` and in `generate()`; pass it back
    with `past_key_values=` to continue the same sequences.
    """

    def __init__(self, config=None, **kwargs) -> None:
        super().__init__(config=config, **kwargs)
        self.begin_forward(False)
        titans = getattr(config, "titans", None) if config is not None else None
        if titans:
            from titans.config import TitansConfig

            for i in TitansConfig.from_dict(titans).layer_indices(config.num_hidden_layers):
                self.titans_layer(i)

    @classmethod
    def upgrade(cls, cache: DynamicCache) -> TitansCache:
        """Turn a plain `DynamicCache` (e.g. the one `generate()` creates) into a `TitansCache`, in place."""
        if not isinstance(cache, TitansCache):
            if type(cache) is not DynamicCache:  # a subclass may rely on its own methods: do not swap it
                raise TypeError(
                    f"a Titans model needs a DynamicCache/TitansCache as past_key_values, got {type(cache).__name__}; "
                    "static, quantized and offloaded caches are not supported."
                )
            cache.__class__ = cls
            cache.begin_forward(False)
        return cache

    # ---------------------------------------------------------------- what one forward reports

    def begin_forward(self, output_memory_aux: bool) -> None:
        """Called by the patched model at the start of every forward: forget the last forward's reports."""
        self.memory_aux: dict[int, list[MemoryAux]] = {}
        self.wants_memory_aux = output_memory_aux
        self.memory_read: Tensor | None = None  # the last memory read of this forward (cross-layer query)

    def end_forward(self) -> None:
        """Called by the patched model at the end of every forward: the read is only meaningful inside it."""
        self.memory_read = None

    def titans_layer(self, layer_idx: int) -> TitansCacheLayer:
        """The `TitansCacheLayer` of decoder layer `layer_idx` (created, or swapped in for an empty HF layer)."""
        while len(self.layers) <= layer_idx:
            self.layers.append(DynamicLayer())
        layer = self.layers[layer_idx]
        if not isinstance(layer, TitansCacheLayer):
            if layer.is_initialized and layer.get_seq_length() > 0:
                raise ValueError(
                    f"cache layer {layer_idx} already holds {layer.get_seq_length()} tokens of plain attention; "
                    "a cache filled by an unpatched model cannot continue in a patched one. Start from a new cache."
                )
            layer = self.layers[layer_idx] = TitansCacheLayer()
        return layer

    @property
    def memory_states(self) -> dict[int, MemoryState]:
        """Layer index -> `MemoryState`, for the patched layers that have seen tokens."""
        return {
            i: layer.memory
            for i, layer in enumerate(self.layers)
            if isinstance(layer, TitansCacheLayer) and layer.memory is not None
        }


def detach_cache(cache: Cache | None) -> Cache | None:
    """Detach every tensor of `cache` in place (KV and memory states) and return it.

    Truncated BPTT: call it at the end of each bptt window, so the next segments keep the values but
    the gradient stops. Works for a `TitansCache` and any `DynamicCache`; None passes through.
    """
    if cache is None:
        return None
    if not isinstance(cache, Cache):
        raise TypeError(f"detach_cache needs a transformers Cache, got {type(cache).__name__}")
    if isinstance(cache, TitansCache):
        cache.memory_aux = {}  # reports hold the graph of the last forward
    for layer in cache.layers:
        if isinstance(layer, TitansCacheLayer):
            layer.detach()
            continue
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, Tensor):
                setattr(layer, name, t.detach())
    return cache


def save_cache(cache: Cache, path: str | Path) -> None:
    """Write a `TitansCache` (or `DynamicCache`): every layer's KV, memory state and extras, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    layers_meta: list[dict] = []
    for i, layer in enumerate(cache.layers):
        meta: dict = {"kind": type(layer).__name__}
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            tensors[f"layer{i}.keys"] = layer.keys.detach().contiguous()
            tensors[f"layer{i}.values"] = layer.values.detach().contiguous()
        if isinstance(layer, DynamicSlidingWindowLayer):
            meta["sliding_window"] = layer.sliding_window
        if hasattr(layer, "cumulative_length"):
            meta["cumulative_length"] = int(layer.cumulative_length)
        if isinstance(layer, TitansCacheLayer):
            if layer.memory is not None:
                t, m = layer.memory.to_tensors(prefix=f"layer{i}.memory.")
                tensors.update(t)
                meta["memory"] = m
            for k, v in layer.extra.items():
                tensors[f"layer{i}.extra.{k}"] = v.detach().clone()  # may share storage with the memory state
            meta["extra"] = sorted(layer.extra)
        elif not isinstance(layer, (DynamicLayer,)):
            raise TypeError(f"save_cache supports dynamic cache layers only; layer {i} is {type(layer).__name__}")
        layers_meta.append(meta)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"titans_cache": json.dumps(layers_meta)})


def load_cache(path: str | Path, device: str | torch.device = "cpu") -> TitansCache:
    """Read a cache written by `save_cache`; returns a `TitansCache` to pass as `past_key_values`."""
    from safetensors import SafetensorError, safe_open

    try:
        opened = safe_open(str(path), framework="pt", device=str(device))
    except SafetensorError as e:  # a pickle, a truncated file, ...: never unpickled, refused
        raise ValueError(f"{path} is not a safetensors cache written by titans.cache.save_cache ({e})") from e
    with opened as f:
        meta = f.metadata() or {}
        if "titans_cache" not in meta:
            raise ValueError(f"{path} is not a cache written by titans.cache.save_cache (no 'titans_cache' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cache = TitansCache()
    cache.layer_class_to_replicate = None
    for i, m in enumerate(json.loads(meta["titans_cache"])):
        kind = m["kind"]
        if kind == "TitansCacheLayer":
            layer = TitansCacheLayer()
            memory = None
            if "memory" in m:
                memory = MemoryState.from_tensors(tensors, m["memory"], prefix=f"layer{i}.memory.")
            extra = {k: tensors[f"layer{i}.extra.{k}"] for k in m.get("extra", [])}
            state = LayerState(tensors.get(f"layer{i}.keys"), tensors.get(f"layer{i}.values"), memory, extra, 0)
            layer.set_state(state, m.get("cumulative_length", 0))
        else:
            layer = DynamicSlidingWindowLayer(m["sliding_window"]) if "sliding_window" in m else DynamicLayer()
            if f"layer{i}.keys" in tensors:
                layer.lazy_initialization(tensors[f"layer{i}.keys"], tensors[f"layer{i}.values"])
                layer.keys, layer.values = tensors[f"layer{i}.keys"], tensors[f"layer{i}.values"]
            if "cumulative_length" in m:
                layer.cumulative_length = m["cumulative_length"]
        cache.layers.append(layer)
    return cache
