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

from titans.cache import LayerState, TitansCache
from titans.compat import take_cache
from titans.config import TitansConfig
from titans.memory import MemoryState, NeuralMemory, query_error_cosine

BASE_PREFIXES = ("self_attn.", "mlp.", "input_layernorm.", "post_attention_layernorm.")


class CrossLayerContext:
    """Per-forward scratch space shared by the patched layers of one model (cross-layer query refinement)."""

    def __init__(self) -> None:
        self.prev_read: Tensor | None = None


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

    q: `[B, H, T, d]`; k, v: `[B, G, S, d]`; mask: bool `[T, S]` (True = visible). Returns `[B, T, D]`.
    """
    groups = attn.num_key_value_groups
    if groups > 1:  # GQA: every kv head serves `groups` query heads
        k = k.repeat_interleave(groups, dim=1)  # (B, H, S, d)
        v = v.repeat_interleave(groups, dim=1)
    dropout = attn.attention_dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=attn.scaling)  # (B,H,T,d)
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
    x̃, y: `[B, T, D]`; returns (contribution `[B, T, D]`, g).
    """

    def __init__(self, dim: int, form: str, bias_init: float, identity_init: bool, init_std: float = 0.02) -> None:
        super().__init__()
        self.form = form
        self.proj = nn.Linear(dim, dim) if form == "sigmoid" else None
        self.bias = nn.Parameter(torch.full((dim,), float(bias_init))) if form == "scalar" else None
        self.scale = nn.Parameter(torch.zeros(dim) if identity_init else torch.ones(dim))
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=init_std)
            nn.init.constant_(self.proj.bias, bias_init)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
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
        self.context: CrossLayerContext | None = None
        self.diagnostics: dict[str, Tensor] = {}
        # with titans.diagnostics on, whether this forward records them (DiagnosticsCallback turns it off on the
        # training steps it does not log: the aux tensors cost ~4% of a tiny model's step)
        self.record_diagnostics = True
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
        cache arrives as `cache` (transformers >= 5.24) or `past_key_values` (earlier)."""
        past_key_values = take_cache(cache, past_key_values, f"{type(self).__name__}.forward")
        T = hidden_states.shape[1]
        cache_layer = None
        state = LayerState()
        if past_key_values is not None:
            cache_layer = TitansCache.upgrade(past_key_values).titans_layer(self.layer_idx)
            state = cache_layer.get_state()
        cos, sin = position_embeddings
        prev = self.context.prev_read if self.context is not None and self.cross_query is not None else None
        if self._titans_checkpointing and self.training and torch.is_grad_enabled():
            out, new_state, read = checkpoint(self._step, hidden_states, cos, sin, state, prev, use_reentrant=False)
        else:
            out, new_state, read = self._step(hidden_states, cos, sin, state, prev)
        if self.context is not None:
            self.context.prev_read = read
        if cache_layer is not None:
            cache_layer.set_state(new_state, T)
        return out

    def _step(
        self, h: Tensor, cos: Tensor, sin: Tensor, state: LayerState, prev_read: Tensor | None
    ) -> tuple[Tensor, LayerState, Tensor | None]:
        """Pure function of its inputs: (new hidden `[B, T, D]`, new LayerState, memory read or None)."""
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
        self, x: Tensor, mem_state: MemoryState | None, prev_read: Tensor | None
    ) -> tuple[Tensor, Tensor, MemoryState]:
        """Run the neural memory on x `[B, T, D]` and gate it. Returns (contribution, raw read, new state)."""
        inp = x
        if self.cross_query is not None and prev_read is not None:  # MemoryMAG cross-layer query refinement
            inp = x + self.cross_query(prev_read)
        if self.titans.diagnostics and self.record_diagnostics:
            y, new_state, aux = self.memory(inp, mem_state, return_aux=True)
        else:
            y, new_state = self.memory(inp, mem_state)
            aux = None
        contribution, g = self.memory_gate(x, y)
        if aux is not None:
            self._record(g, aux, new_state)
        return contribution, y, new_state

    @torch.no_grad()
    def _record(self, g: Tensor, aux: dict[str, Tensor], state: MemoryState) -> None:
        """Detached scalars of the last forward (no host sync: `collect_diagnostics` converts them)."""
        surprise = aux["surprise"]
        finite = torch.isfinite(surprise)
        cos, written = query_error_cosine(aux)
        wsq = sum(w.detach().float().pow(2).flatten(1).sum(1) for w in state.weights.values())  # (B,)
        self.diagnostics = {
            "gate_mean": g.detach().float().mean(),
            "gate_std": g.detach().float().std() if g.numel() > 1 else g.new_zeros(()).float(),
            "scale_abs_mean": self.memory_gate.scale.detach().float().abs().mean(),
            "surprise_norm": torch.where(finite, surprise, 0).sum() / finite.sum().clamp_min(1),
            "lr_mean": aux["lr"].detach().float().mean(),
            "momentum_decay_mean": aux["momentum_decay"].detach().float().mean(),
            "forget_mean": aux["forget"].detach().float().mean(),
            "memory_weight_norm": wsq.sqrt().mean(),
            "query_grad_cos": cos.sum() / written.sum().clamp_min(1),  # MemoryMAG §6.1: should rise in training
        }
