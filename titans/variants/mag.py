"""MAG, Memory as a Gate (Titans §4.2, Eq. 26-28), as a Qwen3 decoder layer.

    x̃ = [persistent tokens] and the normed input         (26)  persistent tokens are attention-only here
    y = SW-Attn*(x̃)                                      (27)  sliding window, persistent tokens always visible
    o = y ⊗ M(x̃)                                         (28)  here: o = y + scale ⊙ σ(W_g x̃ + b) ⊙ M(x̃),
                                                                or with gate "convex": o = (1 − g)·y + g·M(x̃)

diff with Qwen3DecoderLayer: windowed attention (same projections), plus a memory branch on the same
normed input, mixed in by `MemoryGate`; the MLP sub-block is unchanged. The gate form is a switch
(`TitansConfig.gate`); the additive gated form (MemoryMAG) keeps the pretrained attention path intact
and, with `identity_init`, equals the base layer at init.
"""

from __future__ import annotations

from torch import Tensor

from titans.cache import LayerState, MemoryAux
from titans.variants.common import TitansDecoderLayer


class MAGDecoderLayer(TitansDecoderLayer):
    """Memory as a Gate. hidden `[B, T, D]` -> `[B, T, D]`; state: window KV + memory state."""

    variant = "mag"

    def _step(
        self, h: Tensor, cos: Tensor, sin: Tensor, state: LayerState, prev_read: Tensor | None, output_aux: bool
    ) -> tuple[Tensor, LayerState, Tensor | None, list[MemoryAux]]:
        x = self.input_layernorm(h)  # x̃: what attention and memory both read
        attn, keys, values = self.window_attention(x, cos, sin, state)  # Eq. 27
        # M(x̃); with gate "convex" `mem` = g ⊙ (M(x̃) − attn), so the sum is h + (1 − g)·attn + g·M(x̃)
        mem, read, mem_state, aux = self.memory_branch(x, state.memory, prev_read, output_aux, mix_with=attn)
        h = h + attn + mem  # Eq. 28 (gated, additive)
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, LayerState(keys, values, mem_state, {}, state.offset), read, [aux] if aux is not None else []
