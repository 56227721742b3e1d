"""MAC, Memory as a Context (Titans §4.1, Eq. 21-25), as a Qwen3 decoder layer.

For each segment S^(t) of `segment_len` tokens (aligned to absolute positions, so any split of a
sequence into calls gives the same result):

    h_t = M*_{t-1}(q_t),  q_t = S^(t) W_Q                (21)  long-term tokens: reads of the memory as it was
                                                              at the segment's start (no update)
    S̃^(t) = [p_1 .. p_Np] || h_t || S^(t)               (22)  persistent | long-term | segment
    y_t = Attn(S̃^(t))                                   (23)  causal inside the segment (see below)
    M_t = M_{t-1}(y_t)                                   (24)  the memory learns from the attention output
    o_t = y_t ⊗ M*_t(y_t)                                (25)  here: y_t + scale ⊙ g ⊙ M(y_t)

Choices where the paper is ambiguous (all in docs/variants.md):
- Causality of the long-term tokens: h_t[i] is computed from segment token i, so query j sees h_t[i]
  only for i <= j, and only the `num_longterm` most recent of them (None = all: the paper's setting).
  They get the RoPE position of their token.
- "Read after update" (Eq. 25) is at chunk granularity: tokens of memory chunk c read the weights after
  chunk c-1 (the memory's own causal rule), so no token reads a write of a later token.
- `segment_len` must be a multiple of the memory's chunk size, so a segment's last token completes a
  chunk and the next segment's retrieval sees every write of this one.
- What the memory learns from (Eq. 24) and is read with (Eq. 25): `mac_memory_input="attention"` (y_t, the
  default), `"residual"` (h_t + y_t, the residual stream after attention) or `"input"` (x̃_t =
  input_layernorm(h_t), the layer's input, where titans-pytorch's MAC places its memory; as MAG's memory).
- The retrieval query W_Q is its own projection (`longterm_query`), the read is the memory MLP at the
  segment-start weights, and `longterm_out` maps it back to the hidden size.

diff with Qwen3DecoderLayer: attention over [persistent | long-term | segment] with the same projections,
the memory on the attention output, gated into the residual stream; the MLP is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from titans.cache import LayerState, MemoryAux
from titans.variants.common import TitansDecoderLayer, attend, project_qkv, window_mask


class MACDecoderLayer(TitansDecoderLayer):
    """Memory as a Context. hidden `[B, T, D]` -> `[B, T, D]`; state: the current segment's KV (tokens and
    their long-term tokens), the memory state, and the memory weights at the segment's start."""

    variant = "mac"

    def __init__(self, config, layer_idx: int, titans) -> None:
        super().__init__(config, layer_idx, titans)
        mem = self.memory.config
        self.segment_len = titans.segment_len
        self.memory_input = titans.mac_memory_input  # attention: y_t (Eq. 24); residual: h_t + y_t; input: x̃_t
        self.num_longterm = titans.segment_len if titans.num_longterm is None else titans.num_longterm
        self.longterm_query: nn.Linear | None = None
        self.longterm_out: nn.Linear | None = None
        if self.num_longterm > 0:  # no unused parameters (DDP) without long-term tokens
            self.longterm_query = nn.Linear(config.hidden_size, mem.inner_dim, bias=False)  # W_Q of Eq. 21
            self.longterm_out = nn.Linear(mem.inner_dim, config.hidden_size, bias=False)
            nn.init.normal_(self.longterm_query.weight, std=mem.init_std)
            nn.init.normal_(self.longterm_out.weight, std=mem.init_std)

    def longterm_tokens(self, x: Tensor, weights: dict[str, Tensor]) -> Tensor:
        """Eq. 21: read the memory at fixed `weights` (`[B, H, i, o]` per layer) with queries from x `[B, n, D]`.

        Returns long-term tokens `[B, n, D]` (no memory update)."""
        mem = self.memory
        c = mem.config
        B = x.shape[0]
        dtype = next(iter(weights.values())).dtype
        q = rearrange(self.longterm_query(x), "b n (h d) -> (b h) n d", h=c.heads).to(dtype)
        if c.qk_l2_norm:
            q = F.normalize(q, dim=-1)
        w = [rearrange(weights[name].to(dtype), "b h i o -> (b h) i o") for name in mem.memory_model.names]
        y = mem.memory_model.forward_batched(w, q)[0]  # ((b h), n, d)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        y = rearrange(y, "(b h) n d -> b n (h d)", b=B).to(x.dtype)
        return self.longterm_out(y)

    def _step(
        self, h: Tensor, cos: Tensor, sin: Tensor, state: LayerState, prev_read: Tensor | None, output_aux: bool
    ) -> tuple[Tensor, LayerState, Tensor | None, list[MemoryAux]]:
        B, T, _ = h.shape
        S = self.segment_len
        attn = self.self_attn
        mem_state = state.memory if state.memory is not None else self.memory.init_state(B, device=h.device)
        empty = h.new_zeros(B, attn.config.num_key_value_heads, 0, attn.head_dim)
        keys = state.keys if state.keys is not None else empty  # this segment's tokens so far
        values = state.values if state.values is not None else empty
        lt_keys = state.extra.get("lt_keys", empty)  # their long-term tokens
        lt_values = state.extra.get("lt_values", empty)
        seg_weights = {k[4:]: v for k, v in state.extra.items() if k.startswith("seg.")}
        pkv = self.persistent_kv(B)
        outs, reads, auxes = [], [], []
        pos = state.offset
        start = 0
        while start < T:  # one piece per (part of a) segment
            rel = pos % S  # index inside the segment of the piece's first token
            n = min(S - rel, T - start)
            if rel == 0:  # a new segment: M_{t-1} is the memory after every write so far
                seg_weights = dict(mem_state.weights)
                keys, values, lt_keys, lt_values = empty, empty, empty, empty
            hp = h[:, start : start + n]
            x = self.input_layernorm(hp)
            c, s = cos[:, start : start + n], sin[:, start : start + n]
            q, k, v = project_qkv(attn, x, c, s)  # (B, H|G, n, d)
            keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
            q_idx = torch.arange(rel, rel + n, device=h.device)
            k_idx = torch.arange(rel + n, device=h.device)
            parts_k, parts_v, masks = [], [], []
            if pkv is not None:  # Eq. 22: persistent tokens, always visible
                parts_k.append(pkv[0])
                parts_v.append(pkv[1])
                masks.append(torch.ones(n, pkv[0].shape[2], dtype=torch.bool, device=h.device))
            if self.num_longterm > 0:  # Eq. 21-22: long-term tokens of this segment's tokens
                lt = self.input_layernorm(self.longterm_tokens(x, seg_weights))
                _, lk, lv = project_qkv(attn, lt, c, s)
                lt_keys, lt_values = torch.cat([lt_keys, lk], 2), torch.cat([lt_values, lv], 2)
                parts_k.append(lt_keys)
                parts_v.append(lt_values)
                masks.append(window_mask(q_idx, k_idx, self.num_longterm))
            parts_k.append(keys)
            parts_v.append(values)
            masks.append(window_mask(q_idx, k_idx, self.window))
            y = attend(attn, q, torch.cat(parts_k, 2), torch.cat(parts_v, 2), torch.cat(masks, 1))  # Eq. 23
            prev = None if prev_read is None else prev_read[:, start : start + n]
            mem_in = {"attention": y, "residual": hp + y, "input": x}[self.memory_input]
            mem, read, mem_state, aux = self.memory_branch(mem_in, mem_state, prev, output_aux)  # Eq. 24-25
            hp = hp + y + mem
            outs.append(hp + self.mlp(self.post_attention_layernorm(hp)))
            reads.append(read)
            if aux is not None:
                auxes.append(aux)
            pos += n
            start += n
        if pos % S == 0:  # the segment is complete: its KV is no longer needed
            keys, values, lt_keys, lt_values = empty, empty, empty, empty
        extra = {"lt_keys": lt_keys, "lt_values": lt_values, **{f"seg.{k}": v for k, v in seg_weights.items()}}
        new_state = LayerState(keys, values, mem_state, extra, state.offset)
        return torch.cat(outs, 1), new_state, torch.cat(reads, 1), auxes
