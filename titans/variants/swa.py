"""SWA: the no-memory baseline — Qwen3's layer with sliding-window attention (and optional persistent
tokens), exactly the attention MAG/MAL use, so "memory vs no memory at the same window" is one switch."""

from __future__ import annotations

from torch import Tensor

from titans.cache import LayerState, MemoryAux
from titans.variants.common import TitansDecoderLayer


class SWADecoderLayer(TitansDecoderLayer):
    """Sliding-window attention only. hidden `[B, T, D]` -> `[B, T, D]`; state: window KV."""

    variant = "swa"

    def _step(
        self, h: Tensor, cos: Tensor, sin: Tensor, state: LayerState, prev_read: Tensor | None, output_aux: bool
    ) -> tuple[Tensor, LayerState, Tensor | None, list[MemoryAux]]:
        attn, keys, values = self.window_attention(self.input_layernorm(h), cos, sin, state)
        h = h + attn
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, LayerState(keys, values, None, {}, state.offset), None, []
