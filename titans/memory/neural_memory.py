"""`NeuralMemory`: the Titans long-term memory (paper §3.1-3.2 and §4.4), chunk-parallel and differentiable.

Equations (Titans, arXiv 2501.00663):
    ℓ(M; x_t) = ‖M(k_t) − v_t‖²                        (12)  summed over head_dim
    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; x_t)            (14)  t' = start of t's chunk (16-18)
    M_t = (1 − α_t) M_{t−1} + S_t                       (13)
    y_t = M_{c−1}(q_t)                                  (15)  tokens of chunk c read the weights after chunk c−1

Within a chunk every token's gradient is taken at the chunk-start weights, so the momentum and
forgetting recurrences unroll into fixed per-token coefficients:
    M_end = A·M_0 + c_S·S_0 − Σ_j u_j ∇ℓ_j          S_end = E·S_0 − Σ_j s_j ∇ℓ_j
with A = Π(1−α), E = Πη, u_j = θ_j Σ_{t≥j} β_t D_tj, s_j = θ_j D_{C,j}, D_tj = Π_{j<i≤t} η_i,
β_t = Π_{i>t}(1−α_i), c_S = Σ_t β_t Π_{i≤t} η_i. For an MLP layer the per-token gradient is an outer
product h_j^T δ_j, so each weighted sum is one matmul and per-token gradients are never materialised.
`titans.memory.reference` is the token-by-token float64 oracle this is tested against.

einops glossary: b = batch, h = heads, n/t = tokens, d = head_dim, g = (b h) groups, c = chunk tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from titans.memory.config import MemoryConfig
from titans.memory.conv import causal_depthwise_conv
from titans.memory.mlp import MemoryMLP
from titans.memory.state import MemoryState

_LOG_FLOOR = -60.0  # log of a gate that is (numerically) zero; e^-60 ≈ 1e-26


class NeuralMemory(nn.Module):
    """Neural long-term memory that learns at test time.

    `y, state = mem(x, state=None)` with `x`, `y`: `[B, T, dim]`, any `T ≥ 1`. Only complete chunks
    update the weights; the tokens of an unfinished chunk wait in `state.buffer`, so one call on a
    sequence equals any split of it into consecutive calls. Each sample has its own memory.
    """

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__()
        if not isinstance(config, MemoryConfig):
            raise TypeError(f"NeuralMemory(config=...) needs a MemoryConfig, got {type(config).__name__}")
        self.config = c = config
        inner = c.inner_dim
        # §4.4: q/k/v projections, then a causal depthwise conv, then SiLU; q and k ℓ2-normalised.
        self.input_norm = nn.Parameter(torch.ones(c.dim)) if c.input_norm else None
        self.to_qkv = nn.Linear(c.dim, 3 * inner, bias=False)
        self.conv = nn.Conv1d(3 * inner, 3 * inner, c.conv_kernel, groups=3 * inner) if c.conv_kernel else None
        # data-dependent θ_t (lr), η_t (momentum_decay), α_t (forget) per head
        self.to_gates = nn.Linear(c.dim, 3 * c.heads)
        self.memory_model = MemoryMLP(c.head_dim, c.hidden_dim, c.depth, c.activation)
        # M_0 of head h = memory_model's (head-shared) weights + init_offsets[name][h]
        self.init_offsets = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(c.heads, *p.shape)) for name, p in self.memory_model.named_parameters()}
        )
        self.out_norm = nn.Parameter(torch.ones(c.heads, c.head_dim)) if c.output_norm else None
        self.to_out_gate = nn.Linear(c.dim, inner) if c.output_gate else None
        self.to_out = nn.Linear(inner, c.dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        for lin in (self.to_qkv, self.to_out, self.to_out_gate):
            if lin is not None:
                nn.init.normal_(lin.weight, std=c.init_std)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if c.zero_init_output:
            nn.init.zeros_(self.to_out.weight)
        nn.init.normal_(self.to_gates.weight, std=c.init_std)
        if self.conv is not None and c.qk_init == "induction":
            self._induction_init()
        with torch.no_grad():
            bias = self.to_gates.bias.view(3, c.heads)
            bias[0].fill_(c.lr_bias_init)
            bias[1].fill_(c.momentum_bias_init)
            bias[2].fill_(c.forget_bias_init)

    @torch.no_grad()
    def _induction_init(self) -> None:
        """k_t = q_{t-1}: W_k = W_q, the key conv is the query conv one tap later, the value conv is the identity.

        Conv tap j of the causal conv multiplies token t-(K-1-j). The query conv gets random taps for lags
        0..K-2 (the context it summarises), the key conv the same taps for lags 1..K-1 and nothing for lag 0,
        so the key of token t equals the query of token t-1 exactly and the memory starts out storing
        "context -> next token" pairs (an induction head over everything the attention window has lost).
        """
        inner, K = self.config.inner_dim, self.config.conv_kernel
        w = self.to_qkv.weight  # (3*inner, dim): rows q | k | v
        w[inner : 2 * inner].copy_(w[:inner])
        taps = self.conv.weight[:, 0, :]  # (3*inner, K)
        q_taps = torch.randn(inner, K - 1) / (K - 1) ** 0.5
        taps.zero_()
        taps[:inner, 1:] = q_taps  # lags K-2..0
        taps[inner : 2 * inner, :-1] = q_taps  # lags K-1..1: shifted one token back
        taps[2 * inner :, -1] = 1.0  # value of token t = its own projection
        self.conv.bias.zero_()

    # ------------------------------------------------------------------ state

    @property
    def state_dtype(self) -> torch.dtype:
        """fp32, or fp64 after `.double()`; never lower (the state stays fp32 under autocast)."""
        return torch.promote_types(self.to_qkv.weight.dtype, torch.float32)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """The memory before any token: weights M_0 per head, zero momentum, empty buffers."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"init_state(batch_size={batch_size!r}): allowed a positive int")
        device = device or self.to_qkv.weight.device
        dtype = self.state_dtype
        weights, momentum = {}, {}
        for name, p in self.memory_model.named_parameters():
            w0 = (p.unsqueeze(0) + self.init_offsets[name]).to(device=device, dtype=dtype)  # (h, i, o)
            weights[name] = w0.unsqueeze(0).expand(batch_size, *w0.shape)  # (b, h, i, o)
            momentum[name] = torch.zeros_like(weights[name])
        empty = torch.zeros(batch_size, 0, self.config.dim, device=device, dtype=self.to_qkv.weight.dtype)
        return MemoryState(weights, momentum, buffer=empty, conv_context=empty.clone(), offset=0)

    # ------------------------------------------------------------------ forward

    def _check(self, x: Tensor, state: MemoryState | None) -> None:
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != c.dim or not x.is_floating_point():
            got = f"shape {tuple(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"NeuralMemory input x: expected a float tensor [B, T, dim={c.dim}], got {got}")
        if x.shape[1] == 0:
            raise ValueError("NeuralMemory input x: T must be >= 1, got an empty sequence")
        if state is not None:
            if not isinstance(state, MemoryState):
                raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
            if state.batch_size != x.shape[0]:
                raise ValueError(f"state has batch size {state.batch_size} but x has batch size {x.shape[0]}")
            if set(state.weights) != set(self.memory_model.names):
                raise ValueError(
                    f"state weights {sorted(state.weights)} do not match this memory's {self.memory_model.names}"
                )

    @property
    def _has_momentum(self) -> bool:
        """Whether S carries from token to token (η_t not identically 0)."""
        return self.config.momentum and self.config.fixed_momentum_decay != 0.0

    def _gates(self, xt: Tensor, with_values: bool = True) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """Gates `[B, H, n]` for tokens `xt` (`[B, n, dim]`, token 0 starts a chunk): θ, log η, log(1 − α),
        and with `with_values` η and α (else None; only aux reports them).

        log η and log(1 − α) come from the logits (log-sigmoid), so saturated gates give no inf/NaN
        gradients. log η is None without momentum: no coefficient depends on it then.
        """
        c = self.config
        if not c.per_token_gates:  # one value per chunk from the chunk's mean input
            n = xt.shape[1]
            pad = (-n) % c.chunk_size
            xp = F.pad(xt, (0, 0, 0, pad))
            sums = rearrange(xp, "b (k c) d -> b k c d", c=c.chunk_size).sum(2)
            counts = torch.full((sums.shape[1],), float(c.chunk_size), device=xt.device, dtype=xt.dtype)
            counts[-1] = c.chunk_size - pad
            xt = (sums / counts[:, None]).repeat_interleave(c.chunk_size, dim=1)[:, :n]
        # one copy to gate-major, so every gate below is a contiguous [B, H, n] that the scan reshapes for free
        logits = rearrange(self.to_gates(xt), "b n (g h) -> g b h n", g=3).to(self.state_dtype).contiguous()
        if c.fixed_lr is not None:
            lr = torch.full_like(logits[0], c.fixed_lr)
        else:
            lr = torch.sigmoid(logits[0]) * c.max_lr
        log_eta = eta = None
        if not self._has_momentum:
            if with_values:
                eta = torch.zeros_like(logits[1])
        elif c.fixed_momentum_decay is not None:
            eta = torch.full_like(logits[1], c.fixed_momentum_decay)
            log_eta = torch.log(eta).clamp_min(_LOG_FLOOR)
        else:
            log_eta = F.logsigmoid(logits[1]).clamp_min(_LOG_FLOOR)
            if with_values:
                eta = torch.sigmoid(logits[1])
        alpha = None
        if not c.forgetting:
            log_keep = torch.zeros_like(logits[2])
            if with_values:
                alpha = torch.zeros_like(logits[2])
        elif c.fixed_forget is not None:
            alpha = torch.full_like(logits[2], c.fixed_forget)
            log_keep = torch.log1p(-alpha).clamp_min(_LOG_FLOOR)
        else:
            log_keep = F.logsigmoid(-logits[2]).clamp_min(_LOG_FLOOR)
            if with_values:
                alpha = torch.sigmoid(logits[2])
        return lr, log_eta, log_keep, eta, alpha

    def forward(
        self, x: Tensor, state: MemoryState | None = None, return_aux: bool = False
    ) -> tuple[Tensor, MemoryState] | tuple[Tensor, MemoryState, dict[str, Tensor]]:
        """Read the memory for every token of `x` and write every chunk that completes.

        x: `[B, T, dim]`. Returns `y` `[B, T, dim]`, the new state, and with `return_aux` a dict of
        `keys`, `values`, `queries`, `retrieved` (`[B, H, T, head_dim]`), `lr`, `momentum_decay`,
        `forget` (`[B, H, T]`, the gate values used), `surprise` (`[B, H, T]`: the norm of each token's
        inner gradient) and `errors` (`[B, H, T, head_dim]`: M_{t'}(k_t) − v_t at the chunk-start weights,
        the value-space direction of the inner gradient, dℓ/dM(k_t) = 2·error; with its graph). Tokens whose
        chunk is still unfinished after this call are not written yet: NaN in `surprise` and `errors`.
        Nothing of this is computed without `return_aux`.
        """
        self._check(x, state)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device)
        # the tensor work is a function of tensors only (no offset, no MemoryState), so torch.compile
        # specialises on shapes and layouts but not on how many tokens were seen
        step = _compiled_forward() if self.config.compile and not torch.compiler.is_compiling() else type(self)._forward
        y, weights, momentum, buffer, conv_context, aux = step(
            self, x, state.weights, state.momentum, state.conv_context, state.buffer, return_aux
        )
        new_state = MemoryState(weights, momentum, buffer, conv_context, offset=state.offset + x.shape[1])
        return (y, new_state, aux) if return_aux else (y, new_state)

    def _forward(
        self,
        x: Tensor,
        weights: dict[str, Tensor],
        momentum: dict[str, Tensor],
        conv_context: Tensor,
        buffer: Tensor,
        return_aux: bool,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], Tensor, Tensor, dict[str, Tensor] | None]:
        """`forward` on the state's tensors: (y, new weights, new momentum, new buffer, new conv context, aux)."""
        c = self.config
        B, T, _ = x.shape
        n_ctx, n_buf = conv_context.shape[1], buffer.shape[1]
        xs = torch.cat([conv_context.to(x.dtype), buffer.to(x.dtype), x], dim=1)  # (b, ctx+buf+t, d)
        raw = xs  # what the state carries: raw inputs (normalising twice would not be exact)
        if self.input_norm is not None:  # RMSNorm: the memory sees inputs of a fixed scale
            rms = torch.rsqrt(xs.to(self.state_dtype).pow(2).mean(-1, keepdim=True) + 1e-6)
            xs = xs * rms.to(xs.dtype) * self.input_norm

        qkv = self.to_qkv(xs)  # (b, ctx+n, 3*inner), n = buf + t
        if self.conv is not None:
            qkv = self._causal_conv(qkv, n_ctx)  # (b, n, 3*inner)
        else:
            qkv = qkv[:, n_ctx:]
        qkv = F.silu(qkv)  # (b, n, 3*inner); token 0 starts a chunk
        lr, log_eta, log_keep, eta, alpha = self._gates(xs[:, n_ctx:], with_values=return_aux)  # (b, h, n)

        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self.state_dtype
            # one copy to head-major; q, k, v are then contiguous and the scan's (b h) reshapes are free
            qkv = rearrange(qkv, "b n (s h d) -> s b h n d", s=3, h=c.heads).to(dtype).contiguous()
            # split, not qkv[:2] / qkv[2]: an indexing op's backward zero-fills a gradient of the whole tensor
            qk, v = qkv.split([2, 1])
            if c.qk_l2_norm:  # = F.normalize(eps=1e-12), as one multiply (its backward has no divisions)
                qk = qk * torch.rsqrt(qk.pow(2).sum(-1, keepdim=True).clamp_min(1e-24))
            q, k = qk.unbind(0)  # (b, h, n, d) each
            v = v.squeeze(0)
            scan = self._scan_linear if self._linear_fast_path else self._scan
            retrieved, new_w, new_m, surprise, errors, lr_used = scan(q, k, v, lr, log_eta, log_keep, weights,
                                                                      momentum, n_buf, with_aux=return_aux)
        # retrieved: (b, h, t, d) for the new tokens only
        out = retrieved
        if self.out_norm is not None:
            out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * self.out_norm[:, None, :].to(dtype)
        out = rearrange(out, "b h t d -> b t (h d)").to(x.dtype)
        if self.to_out_gate is not None:
            out = out * torch.sigmoid(self.to_out_gate(x))
        y = self.to_out(out)

        n = n_buf + T
        n_keep = n % c.chunk_size  # tokens of the unfinished chunk
        start = n_ctx + n - n_keep  # where the new buffer starts in xs
        ctx_len = min(max(c.conv_kernel - 1, 0), start)
        new_buffer, new_context = raw[:, start:], raw[:, start - ctx_len : start]
        if not return_aux:
            return y, new_w, new_m, new_buffer, new_context, None
        new = slice(n_buf, n)
        aux = {
            "queries": q[:, :, new],
            "keys": k[:, :, new],
            "values": v[:, :, new],
            "retrieved": retrieved,
            "lr": lr_used[:, :, new],  # after surprise clipping and the chunk step cap
            "momentum_decay": eta[:, :, new],
            "forget": alpha[:, :, new],
            "surprise": surprise[:, :, new],
            "errors": errors[:, :, new],
        }
        return y, new_w, new_m, new_buffer, new_context, aux

    def _causal_conv(self, qkv: Tensor, n_ctx: int) -> Tensor:
        """The causal depthwise conv of `qkv` `[B, ctx+n, C]` (its first `n_ctx` tokens are carried context)
        for the last n tokens, `[B, n, C]`.

        Zeros stand in for the context a first call lacks, so split calls equal one long call. See
        `titans.memory.conv`: a conv2d on a channels-last view of the token-major tensor (no transposed
        copies), with a fast weight gradient on CPU.
        """
        K = self.config.conv_kernel
        pad = K - 1 - n_ctx  # the context carries at most K-1 tokens
        if pad:
            qkv = F.pad(qkv, (0, 0, pad, 0))  # (b, K-1+n, C)
        return causal_depthwise_conv(qkv, self.conv.weight.squeeze(1), self.conv.bias)  # (b, n, C)

    # ------------------------------------------------------------------ the chunked scan

    def _scan(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        log_eta: Tensor,
        log_keep: Tensor,
        weights: dict[str, Tensor],
        momentum: dict[str, Tensor],
        n_buf: int,
        with_aux: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], Tensor | None, Tensor | None, Tensor | None]:
        """Chunk loop. q/k/v: `[B, H, n, d]`, θ / log η / log(1−α): `[B, H, n]`; token 0 starts a chunk;
        reads only for tokens >= n_buf (the buffered ones were read by the previous call).

        Everything that depends only on the gates (the per-token coefficients of every chunk) is computed
        for all chunks at once before the loop; the loop runs, per chunk, one MLP forward on
        [queries | keys] (both at the weights after the previous chunk), the analytic backward on the
        keys, and one matmul per layer for the weight and momentum updates.
        """
        c = self.config
        mlp = self.memory_model
        B, H, n, _ = q.shape
        C = c.chunk_size
        dtype = q.dtype
        names = mlp.names
        weights = [rearrange(weights[nm].to(dtype), "b h i o -> (b h) i o") for nm in names]
        momentum = [rearrange(momentum[nm].to(dtype), "b h i o -> (b h) i o") for nm in names]
        q, k, v = (rearrange(t, "b h n d -> (b h) n d") for t in (q, k, v))
        lr, log_keep = (rearrange(t, "b h n -> (b h) n") for t in (lr, log_keep))
        n_full = n // C
        clip = c.surprise_clip > 0
        coef = self._chunk_coefficients(
            lr[:, : n_full * C],
            None if log_eta is None else rearrange(log_eta, "b h n -> (b h) n")[:, : n_full * C],
            log_keep[:, : n_full * C],
        )

        # split / unbind once, not t[:, s:e] per chunk: each indexing op's backward allocates a zero gradient
        # of the whole tensor
        q_chunks, k_chunks, v_chunks = (t.split(C, dim=1) for t in (q, k, v))  # (g, c, d) each
        q_chunks = [q_chunks[0][:, n_buf:], *q_chunks[1:]]  # the buffered tokens were read by the previous call
        coef_chunks = [t.unbind(1) if t is not None else [None] * n_full for t in coef]
        reads, inputs_all, deltas_all, errors_all, lr_chunks = [], [], [], [], []
        for ci in range(n_full):
            n_read = q_chunks[ci].shape[1]
            # Eq. 15 reads and the chunk's inner forward both use the weights after the previous chunk
            x_in = torch.cat([q_chunks[ci], k_chunks[ci]], dim=1) if n_read else k_chunks[ci]
            out, inputs, pre = mlp.forward_batched(weights, x_in)
            if n_read:
                reads.append(out[:, :n_read])
                out = out[:, n_read:]
                inputs = [h[:, n_read:] for h in inputs]
                pre = [z[:, n_read:] for z in pre]
            err = out - v_chunks[ci]  # (g, c, d): M(k) − v
            deltas = mlp.backward_batched(weights, pre, 2.0 * err)  # dℓ/dM(k) of Eq. 12
            u, s_coef, decay, carry_m, carry_s, lr_c = (t[ci] for t in coef_chunks)
            if clip:
                scale = (c.surprise_clip / _surprise(inputs, deltas).clamp_min(1e-12)).clamp(max=1.0)
                u, s_coef, lr_c = u * scale, s_coef * scale, lr_c * scale
            weights, momentum = _apply_update(weights, momentum, inputs, deltas, u, s_coef, decay, carry_m, carry_s)
            inputs_all.append(inputs)
            deltas_all.append(deltas)
            if with_aux:
                errors_all.append(err)
            lr_chunks.append(lr_c)
        if n_full * C < n:  # unfinished chunk: read only; its tokens wait in the buffer
            reads.append(mlp.forward_batched(weights, q_chunks[n_full])[0])

        retrieved = rearrange(torch.cat(reads, dim=1), "(b h) t d -> b h t d", b=B)
        # per-token surprise ‖∇ℓ_t‖ of the written chunks (NaN for tokens still waiting in the buffer)
        surprise = torch.full((B * H, n), float("nan"), device=q.device, dtype=dtype) if with_aux else None
        lr_used = errors = None
        if with_aux:  # errors: (b h n d), NaN for tokens still waiting in the buffer
            errors = rearrange(_pad_nan(errors_all, q), "(b h) n d -> b h n d", b=B)
            lr_used = lr.clone()
            if n_full:
                lr_used[:, : n_full * C] = torch.cat(lr_chunks, dim=1)
            lr_used = rearrange(lr_used, "(b h) n -> b h n", b=B)
        if n_full and with_aux:
            with torch.no_grad():
                per_layer = [torch.cat([chunk[layer] for chunk in inputs_all], 1) for layer in range(mlp.depth)]
                per_layer_d = [torch.cat([chunk[layer] for chunk in deltas_all], 1) for layer in range(mlp.depth)]
                surprise[:, : n_full * C] = _surprise(per_layer, per_layer_d)
        if surprise is not None:
            surprise = rearrange(surprise, "(b h) n -> b h n", b=B)
        new_w = {nm: rearrange(w, "(b h) i o -> b h i o", b=B) for nm, w in zip(names, weights)}
        new_m = {nm: rearrange(m, "(b h) i o -> b h i o", b=B) for nm, m in zip(names, momentum)}
        return retrieved, new_w, new_m, surprise, errors, lr_used

    @property
    def _linear_fast_path(self) -> bool:
        """A linear memory (depth 1) without surprise clipping is a linear recurrence over chunks."""
        return self.config.depth == 1 and self.config.surprise_clip == 0

    def _scan_linear(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        log_eta: Tensor | None,
        log_keep: Tensor,
        weights: dict[str, Tensor],
        momentum: dict[str, Tensor],
        n_buf: int,
        with_aux: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], Tensor | None, Tensor | None, Tensor | None]:
        """`_scan` for a linear memory M(k) = k W, with the same results and far fewer ops.

        With ∇ℓ_j = 2 k_j^T (k_j W − v_j) at the chunk-start W, one chunk of Eq. 13-14 is affine in
        (W, S):   W' = (A·I − 2 Kᵀ diag(u) K) W + c_S·S + 2 Kᵀ diag(u) V
                  S' = −2 Kᵀ diag(s) K W + E·S + 2 Kᵀ diag(s) V
        so every chunk's transition [W'; S'] = P [W; S] + R is built for all chunks at once, the loop
        is one batched matmul-add per chunk, and all reads are one matmul at the end. Without momentum
        the state is W alone. Surprise and θ used (aux) only `with_aux`, else None.
        """
        c = self.config
        name = self.memory_model.names[0]
        B, H, n, d = q.shape
        C = c.chunk_size
        dtype = q.dtype
        w0 = rearrange(weights[name].to(dtype), "b h i o -> (b h) i o")
        s0 = rearrange(momentum[name].to(dtype), "b h i o -> (b h) i o")
        q, k, v = (rearrange(t, "b h n d -> (b h) n d") for t in (q, k, v))
        lr, log_keep = (rearrange(t, "b h n -> (b h) n") for t in (lr, log_keep))
        g = q.shape[0]
        nf = n // C  # complete chunks: written
        nr = -(-n // C)  # chunks with tokens: read (the last may be unfinished)
        momentum = self._has_momentum

        x = torch.cat([w0, s0], dim=1) if momentum else w0  # (g, 2d | d, d)
        states = [x]  # the state before chunk 0, 1, ...
        lr_used = lr
        if nf:
            u, s_coef, decay, carry_m, carry_s, lr_c = self._chunk_coefficients(
                lr[:, : nf * C], None if log_eta is None else rearrange(log_eta, "b h n -> (b h) n")[:, : nf * C],
                log_keep[:, : nf * C],
            )
            kc = k[:, : nf * C].reshape(g * nf, C, d)
            vc = v[:, : nf * C].reshape(g * nf, C, d)
            eye = torch.eye(d, device=q.device, dtype=dtype)
            ku_t = ((2 * u).reshape(g * nf, C, 1) * kc).transpose(1, 2)  # (g·nf, d, c): 2 Kᵀ diag(u)
            # A·I − 2 Kᵀ diag(u) K, in one op
            p_ww = torch.baddbmm(decay.reshape(g * nf, 1, 1) * eye, ku_t, kc, alpha=-1).view(g, nf, d, d)
            r_w = torch.bmm(ku_t, vc).view(g, nf, d, d)
            if momentum:
                ks_t = ((2 * s_coef).reshape(g * nf, C, 1) * kc).transpose(1, 2)
                top = torch.cat([p_ww, carry_m[..., None, None] * eye], dim=-1)  # (g, nf, d, 2d)
                bottom = torch.cat([-(ks_t @ kc).view(g, nf, d, d), carry_s[..., None, None] * eye], dim=-1)
                trans = torch.cat([top, bottom], dim=-2)  # (g, nf, 2d, 2d)
                offset = torch.cat([r_w, (ks_t @ vc).view(g, nf, d, d)], dim=-2)  # (g, nf, 2d, d)
            else:
                trans, offset = p_ww, r_w
            # unbind, not trans[:, ci]: each indexing op would allocate a zero gradient of the whole tensor
            for off_c, trans_c in zip(offset.unbind(1), trans.unbind(1)):
                x = torch.baddbmm(off_c, trans_c, x)
                states.append(x)
            if with_aux:
                lr_used = torch.cat([lr_c.reshape(g, -1), lr[:, nf * C :]], dim=1)

        # reads: chunk c with the weights after chunk c-1 (Eq. 15); the unfinished chunk with the last ones
        w_before = torch.stack(states[:nr], dim=1)[:, :, :d]  # (g, nr, d, d)
        pad = nr * C - n
        qc = (F.pad(q, (0, 0, 0, pad)) if pad else q).reshape(g, nr, C, d)
        retrieved = (qc @ w_before).reshape(g, nr * C, d)[:, n_buf:n]
        surprise = errors = None
        if with_aux:
            err = []  # per-token M(k_t) − v_t = k_t W − v_t at the chunk-start W, with its graph
            if nf:
                kc4 = k[:, : nf * C].reshape(g, nf, C, d)
                err = [(kc4 @ w_before[:, :nf] - v[:, : nf * C].reshape(g, nf, C, d)).reshape(g, nf * C, d)]
            errors = rearrange(_pad_nan(err, q), "(b h) n d -> b h n d", b=B)
            with torch.no_grad():  # per-token surprise ‖∇ℓ_t‖ = 2 ‖k_t‖ ‖k_t W − v_t‖ (NaN while buffered)
                surprise = 2 * k.norm(dim=-1) * errors.detach().reshape(g, n, d).norm(dim=-1)
                surprise = rearrange(surprise, "(b h) n -> b h n", b=B)
            lr_used = rearrange(lr_used, "(b h) n -> b h n", b=B)
        else:
            lr_used = None
        w_last = x[:, :d]
        if momentum:
            s_last = x[:, d:]
        elif nf:
            # no momentum: S is the last chunk's −Σ s_j ∇ℓ_j, and s_j = 0 but for its last token, where
            # s_C = θ_C (capped) = u_C (β_C = 1): S = 2 u_C k_Cᵀ (v_C − k_C W) at the chunk-start W
            last = slice(nf * C - 1, nf * C)
            err = v[:, last] - k[:, last] @ w_before[:, nf - 1]  # (g, 1, d)
            s_last = (2 * u[:, -1, -1:, None] * k[:, last]).transpose(1, 2) @ err  # (g, d, d)
        else:
            s_last = s0
        return (
            rearrange(retrieved, "(b h) t d -> b h t d", b=B),
            {name: rearrange(w_last, "(b h) i o -> b h i o", b=B)},
            {name: rearrange(s_last, "(b h) i o -> b h i o", b=B)},
            surprise,
            errors,
            lr_used,
        )

    def _chunk_coefficients(self, lr: Tensor, log_eta: Tensor | None, log_keep: Tensor) -> tuple:
        """Per-chunk coefficients of Eq. 13-14 with gradients at the chunk-start weights (Eq. 16-18).

        Gates `[g, k*C]` for k complete chunks (log η None without momentum). Returns (u, s_coef `[g, k, C]`;
        decay, carry_m, carry_s `[g, k]` (carry_* None without momentum); θ used `[g, k, C]`) such that for each chunk
            M_end = decay·M_0 + carry_m·S_0 − Σ_j u_j ∇ℓ_j      S_end = carry_s·S_0 − Σ_j s_j ∇ℓ_j
        """
        c = self.config
        C = c.chunk_size
        g = lr.shape[0]
        lr, log_keep = (t.reshape(g, -1, C) for t in (lr, log_keep))  # (g, k, c)
        keep_cum = torch.cumsum(log_keep, dim=-1)  # Σ_{i≤t} log(1−α_i)
        keep_all = keep_cum[..., -1:]  # (g, k, 1)
        beta = torch.exp(keep_all - keep_cum)  # β_t = Π_{i>t} (1−α_i)
        decay = torch.exp(keep_all).squeeze(-1)  # A = Π (1−α)
        if not self._has_momentum:
            u = lr * beta  # S_t = −θ_t ∇ℓ_t: D = I, E = 0
            s_coef = torch.zeros_like(lr)
            s_coef[..., -1] = lr[..., -1]
            carry_m = carry_s = None
        else:
            L = torch.cumsum(log_eta.reshape(g, -1, C), dim=-1)  # log Π_{i≤t} η_i
            diff = L[..., :, None] - L[..., None, :]  # (g, k, t, j): log D_tj for t ≥ j
            causal = torch.ones(C, C, dtype=torch.bool, device=lr.device).tril()
            D = torch.exp(torch.where(causal, diff, torch.full_like(diff, float("-inf"))))
            u = lr * (beta.unsqueeze(-2) @ D).squeeze(-2)  # θ_j Σ_t β_t D_tj
            s_coef = lr * D[..., -1, :]  # θ_j D_{C,j}
            carry_m = (beta * torch.exp(L)).sum(-1)  # c_S = Σ_t β_t Π_{i≤t} η_i
            carry_s = torch.exp(L[..., -1])  # E = Π η
        cap = c.chunk_step_cap
        if cap > 0:
            # Stability guard. All tokens of a chunk step from the same (stale) weights, so the steps of
            # similar keys add up, and momentum carries each step into later chunks. Token j's total step
            # is u_j now plus s_j·c_S·(1 + E + E² + …) later (assuming the same gates); capping the chunk's
            # sum at `cap` keeps a linear memory with unit keys a contraction (heavy ball: α/(1−β) ≤ 1).
            # Equivalent to scaling every θ_j of the chunk by the same factor ≤ 1.
            # Forgetting shifts the bound: along a unit key the chunk maps W to A·W − 2Σu·(k·W), so the factor
            # A − 2Σu stays in [−1, 1] only if Σu ≤ (1 + A)/2. With A → 0 (strong forgetting) a plain Σu ≤ 1
            # allowed −2 per chunk, and a trained MAC memory grew 12× per 64 tokens to NaN.
            total = u.sum(-1, keepdim=True)
            if carry_m is not None:
                later = carry_m / (1 - carry_s).clamp_min(1e-6)  # c_S / (1 − E)
                total = total + s_coef.sum(-1, keepdim=True) * later.unsqueeze(-1)
            limit = cap * (1 + decay.unsqueeze(-1)) / 2  # (g, k, 1); = cap without forgetting
            scale = (limit / total.clamp_min(1e-12)).clamp(max=1.0)  # (g, k, 1)
            u, s_coef, lr = u * scale, s_coef * scale, lr * scale
        return u, s_coef, decay, carry_m, carry_s, lr


_COMPILED: list = []  # torch.compile(NeuralMemory._forward), made on first use


def _compiled_forward():
    """`NeuralMemory._forward` under torch.compile, shared by every memory (parameters are graph inputs)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(NeuralMemory._forward, dynamic=False))
    return _COMPILED[0]


def query_error_cosine(aux: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """cos(q_t, M_{t'}(k_t) − v_t) per token, `[B, H, T]`, from `NeuralMemory(..., return_aux=True)`'s aux:
    the alignment of each token's query with the value-space direction of its inner gradient ∇ℓ (the
    MemoryMAG "query vs memory gradient" cosine). Returns (cosine, 0 where not written yet; written mask).
    The graph of both aux tensors is kept; detach `aux["errors"]` first to train only the query side."""
    errors = aux["errors"]
    written = ~errors.isnan().any(-1)  # (b, h, t)
    cos = F.cosine_similarity(aux["queries"], torch.where(written[..., None], errors, 0.0), dim=-1)
    return torch.where(written, cos, 0.0), written


def _pad_nan(chunks: list[Tensor], like: Tensor) -> Tensor:
    """Concatenate per-chunk `[g, c, d]` tensors along tokens and pad with NaN to `like`'s `[g, n, d]`."""
    g, n, d = like.shape
    done = torch.cat(chunks, dim=1) if chunks else like.new_zeros(g, 0, d)
    return torch.cat([done, like.new_full((g, n - done.shape[1], d), float("nan"))], dim=1)


def _surprise(inputs: list[Tensor], deltas: list[Tensor]) -> Tensor:
    """Per-token ‖∇ℓ_t‖ from layer inputs h and output-gradients δ: ‖∇ℓ_t‖² = Σ_l ‖h_{l,t}‖² ‖δ_{l,t}‖²."""
    sq = sum(h.pow(2).sum(-1) * d.pow(2).sum(-1) for h, d in zip(inputs, deltas))
    return sq.clamp_min(0).sqrt()


def _apply_update(
    weights: list[Tensor],
    momentum: list[Tensor],
    inputs: list[Tensor],
    deltas: list[Tensor],
    u: Tensor,
    s_coef: Tensor,
    decay: Tensor,
    carry_m: Tensor | None,
    carry_s: Tensor | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """M_end = A·M_0 + c_S·S_0 − Σ u_j h_j^T δ_j, S_end = E·S_0 − Σ s_j h_j^T δ_j, one matmul per layer.

    weights/momentum[l]: `[g, i, o]`; inputs[l]: `[g, c, i]`; deltas[l]: `[g, c, o]`; u, s_coef: `[g, c]`;
    decay, carry_*: `[g]`.
    """
    coef = torch.stack([-u, -s_coef], dim=1).unsqueeze(-1)  # (g, 2, c, 1)
    decay_b = decay[:, None, None]
    new_w, new_m = [], []
    for w, m, h, d in zip(weights, momentum, inputs, deltas):
        # both weighted sums in one batched matmul: h^T (−u ⊙ δ) and h^T (−s ⊙ δ)  -> (g, 2, i, o)
        grads = h.transpose(1, 2).unsqueeze(1) @ (coef * d.unsqueeze(1))
        w_next = torch.addcmul(grads[:, 0], decay_b, w)  # A·M_0 − Σ u ∇ℓ
        m_next = grads[:, 1]
        if carry_m is not None:
            w_next = torch.addcmul(w_next, carry_m[:, None, None], m)  # + c_S·S_0
            m_next = torch.addcmul(m_next, carry_s[:, None, None], m)  # E·S_0 − Σ s ∇ℓ
        new_w.append(w_next)
        new_m.append(m_next)
    return new_w, new_m
