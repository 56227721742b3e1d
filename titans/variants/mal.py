"""MAL, Memory as a Layer (Titans §4.3, Eq. 29-31), as a Qwen3 decoder layer.

    x̃ = [persistent tokens] and the input                (29)
    y = M(x̃)                                             (30)  here a residual sub-layer: h + scale ⊙ g ⊙ M(norm(h))
    o = SW-Attn(y)                                        (31)  Qwen3's attention, windowed, on the memory's output

diff with Qwen3DecoderLayer: a memory sub-layer (pre-norm, residual, gated) runs before the attention
sub-layer; attention is windowed with persistent tokens; the MLP is unchanged. The memory reads the
layer's own input norm (the pretrained `input_layernorm`), so it sees the same scale as attention.
"""

from __future__ import annotations

from torch import Tensor

from titans.cache import LayerState, MemoryAux
from titans.variants.common import TitansDecoderLayer


class MALDecoderLayer(TitansDecoderLayer):
    """Memory as a Layer. hidden `[B, T, D]` -> `[B, T, D]`; state: window KV + memory state."""

    variant = "mal"

    def _step(
        self, h: Tensor, cos: Tensor, sin: Tensor, state: LayerState, prev_read: Tensor | None, output_aux: bool
    ) -> tuple[Tensor, LayerState, Tensor | None, list[MemoryAux]]:
        x = self.input_layernorm(h)
        mem, read, mem_state, aux = self.memory_branch(x, state.memory, prev_read, output_aux)  # Eq. 30
        h = h + mem
        attn, keys, values = self.window_attention(self.input_layernorm(h), cos, sin, state)  # Eq. 31
        h = h + attn
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, LayerState(keys, values, mem_state, {}, state.offset), read, [aux] if aux is not None else []
