"""`LongTermMemoryConfig`: how the document memory's long-term store writes, keeps and forgets.

The names are MemoryTitan's; each maps onto the real `titans.memory.NeuralMemory` (its gates are
constants here: there is no outer loop to learn them):

- `learning_rate` (0.5) -> `fixed_lr` θ = learning_rate · (1 − momentum_factor): the total step one
  document's surprise gets over all later writes; 0.5 with a unit key is an exact delta-rule write.
- `momentum_factor` (0.8) -> `fixed_momentum_decay` η: share of past surprise carried to the next
  write (0 = momentum off).
- `forget_rate` (0.05) -> `fixed_forget` α = 1 − (1 − forget_rate)^(1 / long_term_size): the share of
  an association's strength lost over `long_term_size` later writes (0 = off). A per-write 0.05 (as in
  MemoryTitan) erases a document after ~100 writes, so it is spread over the memory's capacity.
- `memory_depth` (1) -> `depth`: memory MLP layers, 1 = linear memory (measured best here).
- `chunk_size` (1) -> `chunk_size`: documents whose gradients share the chunk-start weights.
- `surprise_threshold` (0.5): a document is kept in the store when its relative surprise (its
  surprise over the median surprise of the last `surprise_window` writes) is >= this; 0 keeps all,
  higher is more selective (MemoryTitan's 0.7 keeps ~98% of a corpus of distinct facts here).
- `projection_scale` (0.1) -> q/k/v projections = scale · I: SiLU(0.1·e) ≈ 0.05·e, so keys, values
  and queries stay (almost) the embeddings.

MemoryTitan's other fields are accepted, so its code runs unchanged (None = not set):
- `vector_dim`: the embedding width; `TitansManager` checks it against its own `vector_dim`.
- `max_capacity`: the long-term store's capacity, i.e. `TitansManager(long_term_size=)` (the manager
  takes it from here when `long_term_size` is not given; both given and different is an error).
- `hidden_dim`: hidden width of a deep memory (depth >= 2); the neural memory's hidden width is a
  multiple of `vector_dim`, so it is rounded up to one (`expansion = ceil(hidden_dim / vector_dim)`).

`index` ("exact", default): how the long-term store is searched; "usearch" (or an `IndexConfig`) for an
approximate HNSW index on large stores (`titans.manager.index`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from titans.manager.index import IndexConfig
from titans.memory.config import DictRoundTrip, config_error


def _fail(key: str, value: object, allowed: str, fix: str = "") -> None:
    config_error("LongTermMemoryConfig", key, value, allowed, fix)


@dataclass
class LongTermMemoryConfig(DictRoundTrip):
    """Long-term memory settings of `TitansManager` (MemoryTitan names; mapping in the module docstring)."""

    surprise_threshold: float = 0.5
    forget_rate: float = 0.05
    momentum_factor: float = 0.8
    memory_depth: int = 1
    learning_rate: float = 0.5
    chunk_size: int = 1
    surprise_window: int = 256
    projection_scale: float = 0.1
    seed: int = 0  # initial weights of a deep memory (depth > 1); a linear memory starts at zero
    # MemoryTitan's fields (see the module docstring); None = not set
    vector_dim: int | None = None
    hidden_dim: int | None = None
    max_capacity: int | None = None
    # how the store is searched: "exact" (default), "usearch" (approximate HNSW), or an IndexConfig / its dict
    index: IndexConfig = "exact"  # type: ignore[assignment]  (a str or dict becomes an IndexConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.surprise_threshold, (int, float)) or not 0.0 <= self.surprise_threshold < 1e6:
            _fail(
                "surprise_threshold",
                self.surprise_threshold,
                "a float >= 0 (surprise relative to the running median; 0 keeps every document)",
                "It is relative: 1.0 keeps documents at least as surprising as the median recent one.",
            )
        if not isinstance(self.forget_rate, (int, float)) or not 0.0 <= self.forget_rate < 1.0:
            _fail("forget_rate", self.forget_rate, "a float in [0, 1) (share lost over long_term_size writes)")
        if not isinstance(self.momentum_factor, (int, float)) or not 0.0 <= self.momentum_factor < 1.0:
            _fail("momentum_factor", self.momentum_factor, "a float in [0, 1) (0 = no momentum)")
        if not isinstance(self.memory_depth, int) or not 1 <= self.memory_depth <= 4:
            _fail("memory_depth", self.memory_depth, "an int in 1..4 (1 = linear memory)")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            _fail("learning_rate", self.learning_rate, "a float > 0 (0.5 = exact delta-rule write of a unit key)")
        if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            _fail("chunk_size", self.chunk_size, "a positive int (1 = exact per-document recurrence)")
        if not isinstance(self.surprise_window, int) or self.surprise_window <= 0:
            _fail("surprise_window", self.surprise_window, "a positive int (writes in the running statistics)")
        if not isinstance(self.projection_scale, (int, float)) or not self.projection_scale > 0:
            _fail("projection_scale", self.projection_scale, "a float > 0 (0.1 keeps SiLU near-linear)")
        if not isinstance(self.seed, int):
            _fail("seed", self.seed, "an int")
        if isinstance(self.index, str):
            self.index = IndexConfig(kind=self.index)
        elif isinstance(self.index, dict):
            self.index = IndexConfig.from_dict(self.index)
        elif not isinstance(self.index, IndexConfig):
            _fail("index", self.index, "'exact', 'usearch', an IndexConfig or its dict")
        for key in ("vector_dim", "hidden_dim", "max_capacity"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                _fail(key, value, "None or a positive int")

    def expansion(self, dim: int) -> int | None:
        """The neural memory's `expansion` for `hidden_dim` at width `dim` (None: the memory's default)."""
        return None if self.hidden_dim is None else max(1, math.ceil(self.hidden_dim / dim))

    def fixed_gates(self, long_term_size: int) -> dict[str, float | bool | None]:
        """The `MemoryConfig` gate fields this config maps to (see the module docstring)."""
        forget = 1.0 - (1.0 - self.forget_rate) ** (1.0 / long_term_size)
        return {
            "fixed_lr": self.learning_rate * (1.0 - self.momentum_factor),
            "momentum": self.momentum_factor > 0,
            "fixed_momentum_decay": self.momentum_factor if self.momentum_factor > 0 else None,
            "forgetting": forget > 0,
            "fixed_forget": forget if forget > 0 else None,
        }
