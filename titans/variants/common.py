"""Parts shared by the patched Qwen3 decoder layers.

- `TitansDecoderLayer`: a `Qwen3DecoderLayer` subclass that reads its `LayerState` from the cache,
  runs the variant's pure `_step`, and writes the new state back; with gradient checkpointing on,
  `_step` is recomputed from the same inputs (the cache is written outside the checkpoint), so a
  cache can be carried across segments while checkpointing.
- Windowed attention with persistent tokens, on the base layer's own projections (`self_attn.q_proj`
  ...), so base parameter names are unchanged.
- `MemoryGate`: how the memory branch enters the residual stream, `scale ⊙ g ⊙ y_mem`.

einops-style letters in shape comments: B batch, T new tokens, S keys, H query heads, G kv heads,
d head_dim, D hidden size, P persistent tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3DecoderLayer, apply_rotary_pos_emb

from titans.cache import LayerState, MemoryAux, TitansCache
from titans.compat import take_cache
from titans.config import TitansConfig
from titans.memory import MemoryState, NeuralMemory

BASE_PREFIXES = ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.")
# scaled_dot_product_attention(enable_gqa=True) (torch >= 2.5): grouped heads without repeating k and v
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)
# a one-token call (decoding) attends to every cached key without building a mask; False = the banded path with
# its mask (a benchmark row, benchmarks/perf/decode.py)
MASK_FREE_DECODE = True


# ---------------------------------------------------------------------------------------------- attention


def project_qkv(attn: Qwen3Attention, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Qwen3's q/k/v (with q/k RMSNorm and RoPE). x: `[B, T, D]` -> q `[B, H, T, d]`, k, v `[B, G, T, d]`."""
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q = attn.q_norm(attn.q_proj(x).view(shape)).transpose(1, 2)  # (B, H, T, d)
    k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)  # (B, G, T, d)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def project_kv(attn: Qwen3Attention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Keys/values without RoPE (persistent tokens are position-free). x: `[B, n, D]` -> `[B, G, n, d]`."""
    shape = (*x.shape[:-1], -1, attn.head_dim)
    k = attn.k_norm(attn.k_proj(x).view(shape)).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    return k, v


def attend(attn: Qwen3Attention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Softmax attention and Qwen3's output projection.

    q: `[B, H, T, d]`; k, v: `[B, G, S, d]`; mask: bool `[T, S]` (True = visible) or None (all visible).
    Returns `[B, T, D]`.
    """
    groups = attn.num_key_value_groups
    gqa = {}
    if groups > 1 and _SDPA_GQA:  # GQA: every kv head serves `groups` query heads, without copies of k and v
        gqa = {"enable_gqa": True}
    elif groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, H, S, d)
        v = v.repeat_interleave(groups, dim=1)
    dropout = attn.attention_dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=attn.scaling, **gqa)
    out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)  # (B, T, H*d)
    return attn.o_proj(out)


def window_mask(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """bool `[T, S]`: key at position k_pos visible to query at q_pos (causal, and within `window` if set)."""
    diff = q_pos[:, None] - k_pos[None, :]  # (T, S)
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    return mask


def keep_last(t: Tensor, n: int | None) -> Tensor:
    """The last `n` tokens (dim 2) of `t`; all of them if n is None."""
    if n is None:
        return t
    return t[:, :, max(t.shape[2] - n, 0) :]


# ---------------------------------------------------------------------------------------------- gate


class MemoryGate(nn.Module):
    """The memory branch's way into the residual stream: `scale ⊙ g ⊙ y`, g in (0, 1).

    form "sigmoid": g = σ(W_g x̃ + b) per token and channel (MemoryMAG); "scalar": g = σ(b) per channel;
    "none": g = 1. `scale` (per channel) starts at 0 with `identity_init` (patched == base at step 0).
    form "convex" (MemoryMAG's convex gate, MAG): the mixing weight is m = clamp(scale, 0, 1) ⊙ σ(W_g x̃ + b)
    and the contribution m ⊙ (y − other), so `h + other + contribution = h + (1 − m)·other + m·y` with
    `other` the attention branch; the clamp passes gradient straight through, so a closed gate can reopen.
    x̃, y, other: `[B, T, D]`; returns (contribution `[B, T, D]`, g (m for "convex")).
    """

    def __init__(self, dim: int, form: str, bias_init: float, identity_init: bool, init_std: float = 0.02) -> None:
        super().__init__()
        self.form = form
        self.proj = nn.Linear(dim, dim) if form in ("sigmoid", "convex") else None
        self.bias = nn.Parameter(torch.full((dim,), float(bias_init))) if form == "scalar" else None
        self.scale = nn.Parameter(torch.zeros(dim) if identity_init else torch.ones(dim))
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=init_std)
            nn.init.constant_(self.proj.bias, bias_init)

    def forward(self, x: Tensor, y: Tensor, other: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.form == "convex":
            if other is None:
                raise ValueError("MemoryGate(form='convex') mixes the memory with another branch: pass other=")
            scale = self.scale + (self.scale.clamp(0.0, 1.0) - self.scale).detach()  # value in [0, 1], grad 1
            m = scale * torch.sigmoid(self.proj(x))
            return m * (y - other), m
        if self.proj is not None:
            g = torch.sigmoid(self.proj(x))
        elif self.bias is not None:
            g = torch.sigmoid(self.bias).expand_as(y)
        else:
            g = torch.ones_like(y)
        return self.scale * g * y, g


# ---------------------------------------------------------------------------------------------- the layer


class TitansDecoderLayer(Qwen3DecoderLayer):
    """Base of the patched layers. Subclasses implement `_step`; everything else is shared.

    diff with Qwen3DecoderLayer: attention is computed here (windowed, persistent tokens) on the same
    projections; the layer keeps its KV and memory state in a `TitansCacheLayer`; gradient
    checkpointing keeps the cache (the state is an explicit input of the checkpointed step).
    """

    variant = ""

    def __init__(self, config, layer_idx: int, titans: TitansConfig) -> None:
        super().__init__(config, layer_idx)
        self.layer_idx = layer_idx
        self.titans = titans
        self.window = titans.window
        self._titans_checkpointing = False
        dim = config.hidden_size
        self.persistent = nn.Parameter(torch.randn(titans.num_persistent, dim)) if titans.num_persistent else None
        self.memory: NeuralMemory | None = None
        self.memory_gate: MemoryGate | None = None
        self.cross_query: nn.Linear | None = None
        if titans.has_memory:
            mem_cfg = titans.memory_config()
            self.memory = NeuralMemory(mem_cfg)
            self.memory_gate = MemoryGate(dim, titans.gate, titans.gate_bias_init, titans.identity_init)
            if titans.cross_layer_query:
                self.cross_query = nn.Linear(dim, dim, bias=False)
                nn.init.zeros_(self.cross_query.weight)

    # HF's checkpointing wrapper would drop the cache; keep the flag for our own functional checkpointing
    @property
    def gradient_checkpointing(self) -> bool:  # type: ignore[override]
        return False

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.__dict__["_titans_checkpointing"] = bool(value)

    def titans_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters this layer adds to the base layer (memory, gate, persistent tokens, ...)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(BASE_PREFIXES)]

    def titans_named_buffers(self) -> list[tuple[str, Tensor]]:
        """The buffers this layer adds (e.g. `qk_center` running means): saved and loaded with its parameters."""
        return [(n, b) for n, b in self.named_buffers() if not n.startswith(BASE_PREFIXES)]

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        cache=None,
        **kwargs,
    ) -> Tensor:
        """hidden_states `[B, T, D]` -> `[B, T, D]`. The model-level `attention_mask` is not used: the
        layer builds its own (causal, window, persistent tokens); padding is rejected by the model. The
        cache arrives as `cache` (transformers >= 5.24) or `past_key_values` (earlier). Through the cache
        (a `TitansCache`) the layer also gets the previous memory layer's read of this forward (cross-layer
        query) and hands on its own, and, when the forward was asked (`cache.wants_memory_aux`), leaves its
        `MemoryAux` records in `cache.memory_aux[layer_idx]`."""
        past_key_values = take_cache(cache, past_key_values, f"{type(self).__name__}.forward")
        T = hidden_states.shape[1]
        titans_cache = cache_layer = None
        state = LayerState()
        if past_key_values is not None:
            titans_cache = TitansCache.upgrade(past_key_values)
            cache_layer = titans_cache.titans_layer(self.layer_idx)
            state = cache_layer.get_state()
        cos, sin = position_embeddings
        prev = titans_cache.memory_read if titans_cache is not None and self.cross_query is not None else None
        want_aux = titans_cache is not None and titans_cache.wants_memory_aux and self.memory is not None
        if self._titans_checkpointing and self.training and torch.is_grad_enabled():
            out, new_state, read, aux = checkpoint(self._step, hidden_states, cos, sin, state, prev, want_aux,
                                                   use_reentrant=False)
        else:
            out, new_state, read, aux = self._step(hidden_states, cos, sin, state, prev, want_aux)
        if titans_cache is not None:
            if read is not None:  # layers without memory leave the last read for the next memory layer
                titans_cache.memory_read = read
            if want_aux:
                titans_cache.memory_aux[self.layer_idx] = aux
        if cache_layer is not None:
            cache_layer.set_state(new_state, T)
        return out

    def _step(
        self, h: Tensor, cos: Tensor, sin: Tensor, state: LayerState, prev_read: Tensor | None, output_aux: bool
    ) -> tuple[Tensor, LayerState, Tensor | None, list[MemoryAux]]:
        """Pure function of its inputs: (new hidden `[B, T, D]`, new LayerState, memory read `[B, T, D]` or None,
        the `MemoryAux` of each memory call when `output_aux`, else [])."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------- shared pieces

    def persistent_kv(self, batch: int) -> tuple[Tensor, Tensor] | None:
        """Keys/values of the persistent tokens, `[B, G, P, d]`, from the layer's own norm and projections."""
        if self.persistent is None:
            return None
        x = self.input_layernorm(self.persistent.to(self.input_layernorm.weight.dtype))  # (P, D)
        k, v = project_kv(self.self_attn, x.unsqueeze(0))  # (1, G, P, d)
        return k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)

    def window_attention(self, x: Tensor, cos: Tensor, sin: Tensor, state: LayerState) -> tuple[Tensor, Tensor, Tensor]:
        """Sliding-window attention of the normed input x `[B, T, D]` over the cached keys, the new
        tokens and the persistent tokens. Returns (output `[B, T, D]`, keys and values to cache)."""
        B, T, _ = x.shape
        q, k, v = project_qkv(self.self_attn, x, cos, sin)
        if state.keys is not None:
            k = torch.cat([state.keys, k], dim=2)  # (B, G, S, d)
            v = torch.cat([state.values, v], dim=2)
        n_past = k.shape[2] - T
        pkv = self.persistent_kv(B)
        W = self.window
        if T == 1 and MASK_FREE_DECODE:  # decoding: every key within the window is visible, so no mask
            k0 = 0 if W is None else max(0, n_past + 1 - W)
            kb, vb = k[:, :, k0:], v[:, :, k0:]
            if pkv is not None:
                kb, vb = torch.cat([pkv[0], kb], dim=2), torch.cat([pkv[1], vb], dim=2)
            out = attend(self.self_attn, q, kb, vb, None)
            keep = None if W is None else W - 1
            return out, keep_last(k, keep), keep_last(v, keep)
        # banded: queries in blocks, each against the keys its window can reach (O(T·W), not O(T²))
        block = T if W is None or T <= 2 * max(W, 64) else max(W, 64)
        outs = []
        for b0 in range(0, T, block):
            b1 = min(b0 + block, T)
            k0 = 0 if W is None else max(0, n_past + b0 - (W - 1))  # first reachable key (array index)
            q_pos = torch.arange(b0, b1, device=x.device)
            k_pos = torch.arange(k0, n_past + b1, device=x.device) - n_past
            mask = window_mask(q_pos, k_pos, W)
            kb, vb = k[:, :, k0 : n_past + b1], v[:, :, k0 : n_past + b1]
            if pkv is not None:  # Eq. 19: persistent tokens in front, visible to every query
                kb, vb = torch.cat([pkv[0], kb], dim=2), torch.cat([pkv[1], vb], dim=2)
                mask = torch.cat([mask.new_ones(b1 - b0, pkv[0].shape[2]), mask], dim=1)
            outs.append(attend(self.self_attn, q[:, :, b0:b1], kb, vb, mask))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        keep = None if self.window is None else self.window - 1
        return out, keep_last(k, keep), keep_last(v, keep)

    def memory_branch(
        self, x: Tensor, mem_state: MemoryState | None, prev_read: Tensor | None, output_aux: bool = False,
        mix_with: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, MemoryState, MemoryAux | None]:
        """Run the neural memory on x `[B, T, D]` and gate it (`mix_with`: the branch a convex gate mixes with).

        Returns (contribution `[B, T, D]`, raw read `[B, T, D]`, new state, `MemoryAux` when `output_aux` else None).
        """
        inp = x
        if self.cross_query is not None and prev_read is not None:  # MemoryMAG cross-layer query refinement
            inp = x + self.cross_query(prev_read)
        if output_aux:
            y, new_state, aux = self.memory(inp, mem_state, return_aux=True)
        else:
            y, new_state = self.memory(inp, mem_state)
        contribution, g = self.memory_gate(x, y, mix_with)
        if not output_aux:
            return contribution, y, new_state, None
        gate = g if self.memory_gate.form != "none" else None
        return contribution, y, new_state, MemoryAux(gate, self.memory_gate.scale, aux, new_state)
