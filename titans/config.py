"""`TitansConfig`: every switch of a patched Qwen3 (variant, where the memory sits, attention, gate, training).

Validated at construction; `to_dict()` is JSON-ready and is stored as `model.config.titans`, so it
round-trips through `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from titans.memory import MemoryConfig
from titans.memory.config import DictRoundTrip, config_error

MEMORY_VARIANTS = ("mac", "mag", "mal")  # the variants with a neural memory
VARIANTS = (*MEMORY_VARIANTS, "swa")  # "swa": sliding-window attention only, the no-memory baseline
GATES = ("sigmoid", "scalar", "none", "convex")
FREEZE = ("memory", "lora", "none")  # what trains: the new parameters, + LoRA on the base, everything
MAC_MEMORY_INPUTS = ("attention", "residual", "input")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _fail(key: str, value: object, allowed: str, fix: str = "") -> None:
    config_error("TitansConfig", key, value, allowed, fix)


def _indices(key: str, spec: str | int | list[int], num_layers: int) -> list[int]:
    """Layer indices of a "all" | every-k-th | list spec, for a model with `num_layers` layers."""
    if spec == "all":
        return list(range(num_layers))
    if isinstance(spec, int):
        return list(range(0, num_layers, spec))
    bad = [i for i in spec if not -num_layers <= i < num_layers]
    if bad:
        _fail(key, spec, f"indices in [0, {num_layers}) (the model has {num_layers} decoder layers)")
    return sorted({i % num_layers for i in spec})


@dataclass
class TitansConfig(DictRoundTrip):
    """How `patch_qwen3` turns a Qwen3 into a Titans model.

    variant:  "mag" (Eq. 26-28), "mal" (Eq. 29-31), "mac" (Eq. 21-25), or "swa" (no memory: the
              sliding-window(+persistent tokens) baseline with the same attention as MAG/MAL).
    memory:   a `MemoryConfig`, or a dict of its fields; `dim` is always the model's hidden size.
    layers:   "all", an int k (every k-th layer: 0, k, 2k, ...), or a list of layer indices.
    memory_layers: which of the patched `layers` get a memory, in the same forms ("all": every one).
              The others become sliding-window attention layers without memory (variant "swa"), so a
              model can carry one memory and still see only `window` tokens everywhere (titans-pytorch's
              `neural_memory_layers`). Needs `window` when it leaves any patched layer without memory.
    window:   sliding-window width in tokens (a query sees itself and the window-1 tokens before it;
              persistent tokens are always visible). None = full causal attention (MAG/MAL) or the
              whole segment (MAC). Required for "swa".
    segment_len, num_longterm: MAC only. Attention runs inside segments of `segment_len` tokens
              aligned to absolute positions; token j of a segment also sees the long-term tokens
              (memory reads) of the `num_longterm` most recent segment tokens up to and including j
              (None = all of them, the paper's setting).
    mac_memory_input: MAC only. What the memory learns from and is read with in Eq. 24-25:
              "attention" (y_t = Attn(S̃), the paper's equations read literally), "residual" (h_t + y_t,
              the residual stream after attention) or "input" (x̃_t = input_layernorm(h_t), the layer
              input: where titans-pytorch's MAC places its memory, and what MAG's memory sees). The
              attention output blends the segment and carries a token's own identity only weakly.
    num_persistent: learned input-independent tokens (Eq. 19) visible to every query.
    gate:     "sigmoid" (g = σ(W_g x̃ + b), per token and channel, MemoryMAG), "scalar" (g = σ(b) per
              channel) or "none" (g = 1): the memory contributes `scale ⊙ g ⊙ memory(x̃)`. "convex" (MAG
              only, MemoryMAG's convex gate): h + (1 − g)·attn + g·memory(x̃) with g = clamp(scale, 0, 1) ⊙
              σ(W_g x̃ + b), so g = 0 at init with `identity_init` (the base layer exactly).
    gate_bias_init: b at init (-3 -> g ≈ 0.047: nearly closed, as MemoryMAG).
    identity_init: `scale` starts at 0, so the patched model equals the base model at step 0; the
              first backward then reaches only `scale` (everything upstream gets its first non-zero
              gradient after one optimizer step). False: `scale` starts at 1 and every memory
              parameter gets a gradient on the first backward, at the cost of not being the identity.
    cross_layer_query: the memory input of a patched layer also gets a (zero-initialised) projection of
              the previous patched layer's memory read (MemoryMAG's cross-layer query refinement).
    freeze:   "memory" (only new parameters train), "lora" (LoRA on the base via peft + the memory),
              "none" (everything trains).
    lora_r, lora_alpha, lora_dropout, lora_targets: LoRA settings for freeze="lora".
    """

    variant: str = "mag"
    memory: MemoryConfig | dict | None = None
    layers: str | int | list[int] = "all"
    memory_layers: str | int | list[int] = "all"
    window: int | None = None
    segment_len: int = 64
    num_longterm: int | None = None
    mac_memory_input: str = "attention"
    num_persistent: int = 0
    gate: str = "sigmoid"
    gate_bias_init: float = -3.0
    identity_init: bool = True
    cross_layer_query: bool = False
    freeze: str = "memory"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    hidden_size: int | None = None  # filled by patch_qwen3 from the model (the memory's dim)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            _fail("variant", self.variant, f"one of {VARIANTS}", "('swa' = sliding window only, no memory)")
        for key in ("layers", "memory_layers"):
            value = getattr(self, key)
            if isinstance(value, bool) or not (
                value == "all"
                or (isinstance(value, int) and value > 0)
                or (isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value))
            ):
                _fail(key, value, '"all", an int k > 0 (every k-th layer) or a list of layer indices')
            if isinstance(value, tuple):
                setattr(self, key, list(value))
            if isinstance(value, (list, tuple)) and not value:
                _fail(key, value, "a non-empty list", "To run without memory use variant 'swa' or the unpatched model.")
        if self.variant == "swa" and self.memory_layers != "all":
            _fail("memory_layers", self.memory_layers, "'all' for variant 'swa' (it has no memory)")
        if self.window is not None and (not isinstance(self.window, int) or self.window <= 0):
            _fail("window", self.window, "None (full attention) or an int > 0")
        if self.variant == "swa" and self.window is None:
            _fail("window", self.window, "an int > 0 for variant 'swa'", "The sliding-window baseline needs a window.")
        if not isinstance(self.segment_len, int) or self.segment_len <= 0:
            _fail("segment_len", self.segment_len, "an int > 0")
        if self.num_longterm is not None and (not isinstance(self.num_longterm, int) or self.num_longterm < 0):
            _fail("num_longterm", self.num_longterm, "None (= segment_len) or an int >= 0")
        if self.mac_memory_input not in MAC_MEMORY_INPUTS:
            _fail("mac_memory_input", self.mac_memory_input, f"one of {MAC_MEMORY_INPUTS}")
        if not isinstance(self.num_persistent, int) or self.num_persistent < 0:
            _fail("num_persistent", self.num_persistent, "an int >= 0")
        if self.gate not in GATES:
            _fail("gate", self.gate, f"one of {GATES}")
        if self.gate == "convex" and self.variant != "mag":
            _fail("gate", self.gate, f"one of {GATES[:3]} for variant {self.variant!r} ('convex' mixes the memory "
                  "with the attention branch beside it: MAG only)")
        if self.freeze not in FREEZE:
            _fail("freeze", self.freeze, f"one of {FREEZE}")
        if not isinstance(self.lora_r, int) or self.lora_r <= 0:
            _fail("lora_r", self.lora_r, "an int > 0")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [self.lora_targets]
        self.lora_targets = list(self.lora_targets)
        if self.memory is None:
            self.memory = {}
        if isinstance(self.memory, MemoryConfig):
            self.memory = self.memory.to_dict()
        if not isinstance(self.memory, dict):
            raise TypeError(
                f"TitansConfig.memory must be a MemoryConfig or a dict of its fields, got {type(self.memory).__name__}"
            )
        self.memory = dict(self.memory)
        if self.variant == "swa" and self.memory:
            _fail("memory", self.memory, "no memory options for variant 'swa' (it has no memory)",
                  "Use variant 'mag', 'mal' or 'mac' for a memory, or drop the memory options.")
        if self.hidden_size is not None:
            self.memory_config()  # validate now

    def memory_config(self) -> MemoryConfig:
        """The `MemoryConfig` with `dim` = the model's hidden size (needs `hidden_size`)."""
        if self.hidden_size is None:
            raise ValueError("TitansConfig.hidden_size is not set; patch_qwen3 fills it from the model.")
        mem = dict(self.memory)
        dim = mem.get("dim")
        if dim is not None and dim != self.hidden_size:
            _fail("memory.dim", dim, f"the model's hidden size {self.hidden_size}", "Leave memory.dim unset.")
        mem["dim"] = self.hidden_size
        cfg = MemoryConfig.from_dict(mem)
        if self.variant == "mac" and self.segment_len % cfg.chunk_size:
            _fail(
                "segment_len",
                self.segment_len,
                f"a multiple of memory.chunk_size={cfg.chunk_size}",
                "MAC writes whole chunks at segment boundaries; change segment_len or memory.chunk_size.",
            )
        if self.variant in ("mag", "mal") and self.window is not None and self.window < cfg.chunk_size:
            _fail(
                "window",
                self.window,
                f"an int >= memory.chunk_size={cfg.chunk_size} (or None)",
                "Tokens of an unfinished chunk are not yet in memory, so a window smaller than a chunk "
                "would hide them from both attention and memory; raise window or lower memory.chunk_size.",
            )
        return cfg

    def layer_indices(self, num_layers: int) -> list[int]:
        """The decoder layers that get patched, for a model with `num_layers` layers."""
        return _indices("layers", self.layers, num_layers)

    def memory_layer_indices(self, num_layers: int) -> list[int]:
        """The patched layers that get a memory (all of them for "all"; none for variant "swa")."""
        patched = self.layer_indices(num_layers)
        if not self.has_memory:
            return []
        if self.memory_layers == "all":
            return patched
        out = _indices("memory_layers", self.memory_layers, num_layers)
        if set(out) - set(patched):
            _fail("memory_layers", self.memory_layers, f"a subset of the patched layers {patched}",
                  "Add the layer to `layers` too.")
        if self.window is None and len(out) < len(patched):
            _fail("window", self.window, "an int > 0 when memory_layers leaves patched layers without memory",
                  f"Layers {sorted(set(patched) - set(out))} run sliding-window attention only and need a window.")
        return out

    @property
    def has_memory(self) -> bool:
        return self.variant != "swa"

    _unknown_hint = " Memory fields go inside memory=dict(...)."
    _internal_keys = frozenset({"hidden_size"})
    # switches of earlier releases still found in saved configs, ignored on load: `diagnostics` (they are now
    # asked per forward, `model(ids, output_memory_aux=True)`)
    _legacy_keys = frozenset({"diagnostics"})

    @classmethod
    def from_dict(cls, data: dict) -> TitansConfig:
        return super().from_dict({k: v for k, v in data.items() if k not in cls._legacy_keys})
