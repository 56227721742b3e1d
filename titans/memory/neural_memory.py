"""`NeuralMemory`: the Titans long-term memory (paper §3.1-3.2 and §4.4), chunk-parallel and differentiable.

Equations (Titans, arXiv 2501.00663):
    ℓ(M; x_t) = ‖M(k_t) − v_t‖²                        (12)  summed over head_dim
    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; x_t)            (14)  t' = start of t's chunk (16-18)
    M_t = (1 − α_t) M_{t−1} + S_t                       (13)
    y_t = M_{c−1}(q_t)                                  (15)  tokens of chunk c read the weights after chunk c−1

The module (this file): projections, causal conv, gates, state, read-out. The scan over chunks lives
beside it, laid out like a flash-linear-attention op:
    titans/memory/chunk.py      the chunked scan of a deep memory (and the per-chunk coefficients)
    titans/memory/linear.py     the fast path of a linear memory (depth 1)
    titans/memory/fused_io.py   the input side (norm, q/k/v, conv, SiLU, ℓ2 norms) and output side (norm, gate,
                                projection) as ops with hand-written backwards (the training fast path)
    titans/memory/reference.py  the token-by-token float64 oracle both are tested against

einops glossary: b = batch, h = heads, n/t = tokens, d = head_dim, g = (b h) groups, c = chunk tokens.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from titans.memory.chunk import chunk_scan
from titans.memory.config import MemoryConfig
from titans.memory.conv import causal_depthwise_conv
from titans.memory.fused_io import InputProjection, OutputProjection
from titans.memory.linear import linear_scan
from titans.memory.mlp import MemoryMLP
from titans.memory.state import MemoryState

_LOG_FLOOR = -60.0  # log of a gate that is (numerically) zero; e^-60 ≈ 1e-26
# calls that complete no chunk (decoding) take `NeuralMemory._forward_read_only`; False = every call runs
# `_forward` (a benchmark row, benchmarks/perf/decode.py; tests hold both to each other)
READ_ONLY_PATH = True
# a writing call's input side (RMSNorm, q/k/v, conv, SiLU, ℓ2 norms) and output side (output norm, gate, projection)
# as one autograd op each with a hand-written backward, where the switches allow (`titans.memory.fused_io`);
# False = the plain ops (the tests' oracle, a benchmark row)
FUSED_IO = True
_NO_CTX = contextlib.nullcontext()


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
        self.to_gates_keys = nn.Linear(c.inner_dim, 3 * c.heads, bias=False) if c.gate_keys else None
        self.memory_model = MemoryMLP(c.head_dim, c.hidden_dim, c.depth, c.activation)
        self._param_shapes = {name: tuple(p.shape) for name, p in self.memory_model.named_parameters()}
        # M_0 of head h = memory_model's (head-shared) weights + init_offsets[name][h]
        self.init_offsets = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(c.heads, *p.shape)) for name, p in self.memory_model.named_parameters()}
        )
        self.out_norm = nn.Parameter(torch.ones(c.heads, c.head_dim)) if c.output_norm else None
        self.to_out_gate = nn.Linear(c.dim, inner) if c.output_gate else None
        self.to_out = nn.Linear(inner, c.dim, bias=False)
        # qk_features="bilinear": φ(x) = (A_h x) ⊙ (B_h x); rows A | B, per head
        self.qk_feature_maps = (nn.Parameter(torch.empty(2, c.heads, c.head_dim, c.head_dim))
                                if c.qk_features == "bilinear" else None)
        if c.qk_center:  # running means of queries and keys (rows q | k), and how many training calls made them
            self.register_buffer("qk_mean", torch.zeros(2, c.heads, c.head_dim))
            self.register_buffer("qk_mean_calls", torch.zeros((), dtype=torch.long))
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
        if self.to_gates_keys is not None:  # the paper's gates at init
            nn.init.zeros_(self.to_gates_keys.weight)
        if self.conv is not None and c.qk_init == "induction":
            self._induction_init()
        if self.qk_feature_maps is not None:  # E[φ(q)·φ(k)] = (q·k)² at init; drawn last
            nn.init.normal_(self.qk_feature_maps, std=c.head_dim ** -0.5)
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
            if state.weights.keys() != self._param_shapes.keys():
                raise ValueError(
                    f"state weights {sorted(state.weights)} do not match this memory's {self.memory_model.names}"
                )
            B = x.shape[0]
            for kind, tensors in (("weights", state.weights), ("momentum", state.momentum)):
                for name, shape in self._param_shapes.items():
                    want = (B, c.heads, *shape)
                    if tensors[name].shape != want:
                        raise ValueError(
                            f"state {kind}[{name!r}] has shape {tuple(tensors[name].shape)} but this memory "
                            f"(heads={c.heads}, head_dim={c.head_dim}, depth={c.depth}) needs {want} "
                            "[batch, heads, in, out]: the state comes from a memory with another config."
                        )
            for kind, t in (("buffer", state.buffer), ("conv_context", state.conv_context)):
                if t.dim() != 3 or t.shape[-1] != c.dim:
                    raise ValueError(
                        f"state {kind} has shape {tuple(t.shape)} but this memory needs [{B}, n, dim={c.dim}]"
                    )

    @property
    def _has_momentum(self) -> bool:
        """Whether S carries from token to token (η_t not identically 0)."""
        return self.config.momentum and self.config.fixed_momentum_decay != 0.0

    def _gates(self, xt: Tensor, with_values: bool = True, keys: Tensor | None = None,
               ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """Gates `[B, H, n]` for tokens `xt` (`[B, n, dim]`, token 0 starts a chunk): θ, log η, log(1 − α),
        and with `with_values` η and α (else None; only aux reports them). `keys` `[B, n, inner]`: the conv'd
        keys the gates also see (`gate_keys`).

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
        logits = self.to_gates(xt)
        if self.to_gates_keys is not None:
            logits = logits + self.to_gates_keys(keys.to(logits.dtype))
        logits = rearrange(logits, "b n (g h) -> g b h n", g=3).to(self.state_dtype).contiguous()
        if c.fixed_lr is not None:
            lr = torch.full_like(logits[0], c.fixed_lr)
        else:
            lr = torch.sigmoid(logits[0]) * c.max_lr
            if c.min_lr > 0:  # sparse writes: below the floor a token writes nothing
                lr = torch.where(lr < c.min_lr, torch.zeros_like(lr), lr)
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
        if self.config.nonfinite == "error":
            self._check_finite(x, state.offset)
        if self._read_only(x, state, return_aux):
            y, buffer = self._forward_read_only(x, state.weights, state.conv_context, state.buffer)
            return y, MemoryState(state.weights, state.momentum, buffer, state.conv_context, state.offset + x.shape[1])
        # the tensor work is a function of tensors only (no offset, no MemoryState), so torch.compile
        # specialises on shapes and layouts but not on how many tokens were seen
        step = _compiled_forward() if self.config.compile and not torch.compiler.is_compiling() else type(self)._forward
        y, weights, momentum, buffer, conv_context, aux = step(
            self, x, state.weights, state.momentum, state.conv_context, state.buffer, return_aux
        )
        new_state = MemoryState(weights, momentum, buffer, conv_context, offset=state.offset + x.shape[1])
        return (y, new_state, aux) if return_aux else (y, new_state)

    def _check_finite(self, x: Tensor, offset: int) -> None:
        """Raise naming the first non-finite token (one host sync): its write would poison the memory for good.

        A NaN or inf anywhere makes the sum non-finite (one reduction: a decoded token pays two ops, not isfinite's
        five); only then, or when finite values overflow the sum, the exact test runs."""
        if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
            b, t = (int(i) for i in (~torch.isfinite(x).all(-1)).nonzero()[0])  # the first bad (batch, token)
            raise ValueError(
                f"NeuralMemory input x is not finite (NaN or inf) at batch {b}, token {t} of this call (token "
                f"{offset + t} of the sequence); writing it would poison that sample's memory state for good. "
                "Find where the non-finite value comes from, or set MemoryConfig.nonfinite='skip' to skip the "
                "writes of such tokens (their output is NaN)."
            )

    def _read_only(self, x: Tensor, state: MemoryState, return_aux: bool) -> bool:
        """Whether this call completes no chunk, so `_forward_read_only` gives its result (decoding: every call
        but one per chunk). Not with aux (it reports the gates of the buffered tokens) or nonfinite='skip'."""
        c = self.config
        return (READ_ONLY_PATH and state.buffer.shape[1] + x.shape[1] < c.chunk_size and not return_aux
                and c.nonfinite != "skip" and not (c.qk_center and self.training))  # training moves the means

    def _forward_read_only(
        self, x: Tensor, weights: dict[str, Tensor], conv_context: Tensor, buffer: Tensor
    ) -> tuple[Tensor, Tensor]:
        """`_forward` for a call whose tokens complete no chunk: (y, new buffer); weights, momentum and conv context
        are unchanged. Equal to `_forward` (tests/memory/test_neural_memory.py::test_read_only_path_equals_general_path)
        and a few times cheaper per decoded token: only the queries of the new tokens are computed (from the
        K-1 raw tokens before them), the keys, values and gates of the unfinished chunk are left to the call that
        completes it, and the conv of a few tokens is a weighted sum of its taps (oneDNN's conv costs ~0.1 ms a call).
        """
        c = self.config
        B, T, _ = x.shape
        inner, K, H = c.inner_dim, c.conv_kernel, c.heads
        dtype = self.state_dtype
        raw = torch.cat([t if t.dtype == x.dtype else t.to(x.dtype) for t in (conv_context, buffer, x)], dim=1)
        xs = raw[:, max(raw.shape[1] - T - max(K - 1, 0), 0) :]  # (b, m, dim): the new tokens and the conv's context
        if self.input_norm is not None:
            xs = self._input_rms_norm(xs)
        q = F.linear(xs, self.to_qkv.weight[:inner])  # (b, m, inner): the query rows of to_qkv
        if self.conv is not None:
            pad = K - 1 + T - q.shape[1]  # zeros stand in for the context the sequence's first tokens lack
            if pad:
                q = F.pad(q, (0, 0, pad, 0))
            taps = self.conv.weight[:inner, 0]  # (inner, K): tap j multiplies token t+j of the padded input
            q = (q.unfold(1, K, 1) * taps).sum(-1) + self.conv.bias[:inner]  # (b, t, inner)
        if c.qk_activation == "silu":
            q = F.silu(q)
        # the read in the state dtype, outside autocast (a context manager only when autocast is on: decoding
        # pays for every Python step)
        off = torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else _NO_CTX
        with off:
            q = q.view(B, T, H, -1).transpose(1, 2).reshape(B * H, T, -1)  # ((b h), t, d)
            q = q if q.dtype == dtype else q.to(dtype)
            if c.qk_center:
                q = q - self.qk_mean[0].to(dtype).repeat(B, 1)[:, None, :]  # (h, d) -> ((b h), 1, d)
            if c.qk_features != "none":
                q = self._qk_features(q.view(B, H, T, -1)).flatten(0, 1)
            if c.qk_l2_norm:
                q = q * torch.rsqrt(torch.linalg.vecdot(q, q).unsqueeze(-1).clamp_min(1e-24))
            w = [weights[nm].flatten(0, 1) for nm in self.memory_model.names]  # ((b h), i, o)
            w = [t if t.dtype == dtype else t.to(dtype) for t in w]
            out = self.memory_model.forward_batched(w, q)[0].view(B, H, T, -1)  # Eq. 15: y_t = M(q_t)
            if self.out_norm is not None:
                out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * self.out_norm[:, None, :].to(dtype)
            out = out.transpose(1, 2).reshape(B, T, inner)
        out = out if out.dtype == x.dtype else out.to(x.dtype)
        if self.to_out_gate is not None:
            out = out * torch.sigmoid(self.to_out_gate(x))
        return self.to_out(out), raw[:, conv_context.shape[1] :]

    def _input_rms_norm(self, xs: Tensor) -> Tensor:
        """RMSNorm of the memory's input `[B, n, dim]` (statistics in the state dtype): inputs of a fixed scale."""
        dtype = self.state_dtype
        rms = torch.rsqrt((xs if xs.dtype == dtype else xs.to(dtype)).pow(2).mean(-1, keepdim=True) + 1e-6)
        return xs * (rms if rms.dtype == xs.dtype else rms.to(xs.dtype)) * self.input_norm

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
        skip = None
        if c.nonfinite == "skip":  # non-finite tokens (also ones carried in the buffer) enter as zeros, unwritten
            skip = ~torch.isfinite(xs).all(-1)  # (b, ctx+buf+t)
            xs = torch.where(skip[..., None], 0.0, xs)
            x = xs[:, n_ctx + n_buf :]
        fused_io = self._fused_io(x)
        if fused_io:  # one op with a hand-written backward: norm, q/k/v, conv, SiLU, ℓ2 norms
            qkv, x_norm = InputProjection.apply(xs, self.input_norm, self.to_qkv.weight, self.conv.weight.squeeze(1),
                                                self.conv.bias, n_ctx, c.heads)  # (s, b, h, n, d); (b, n, dim)
            lr, log_eta, log_keep, eta, alpha = self._gates(x_norm, return_aux)  # (b, h, n)
            q, k, v = qkv.unbind(0)  # (b, h, n, d) each
        else:
            q, k, v, lr, log_eta, log_keep, eta, alpha = self._project(xs, n_ctx, skip, return_aux)

        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = self.state_dtype
            if self._linear_fast_path:
                retrieved, new_w, new_m, surprise, errors, lr_used = linear_scan(
                    c, q, k, v, lr, log_eta, log_keep, weights, momentum, n_buf, with_aux=return_aux)
            else:
                retrieved, new_w, new_m, surprise, errors, lr_used = chunk_scan(
                    self.memory_model, c, q, k, v, lr, log_eta, log_keep, weights, momentum, n_buf, with_aux=return_aux)
        # retrieved: (b, h, t, d) for the new tokens only
        if fused_io and self.out_norm is not None and self.to_out_gate is not None:
            y = OutputProjection.apply(retrieved, self.out_norm, x, self.to_out_gate.weight, self.to_out_gate.bias,
                                       self.to_out.weight)  # (b, t, dim)
        else:
            out = retrieved
            if self.out_norm is not None:
                out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * self.out_norm[:, None, :].to(dtype)
            out = rearrange(out, "b h t d -> b t (h d)").to(x.dtype)
            if self.to_out_gate is not None:
                out = out * torch.sigmoid(self.to_out_gate(x))
            y = self.to_out(out)
        if skip is not None:
            y = torch.where(skip[:, n_ctx + n_buf :, None], float("nan"), y)

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

    def _project(self, xs: Tensor, n_ctx: int, skip: Tensor | None, return_aux: bool) -> tuple:
        """Queries, keys, values `[B, H, n, d]` (state dtype) and the gates of `_gates` for the raw tokens `xs`
        `[B, n_ctx+n, dim]` (the first n_ctx carried conv context), in plain ops that autograd differentiates
        (`titans.memory.fused_io.InputProjection` is the same for the default switches, in one op)."""
        c = self.config
        if self.input_norm is not None:  # RMSNorm: the memory sees inputs of a fixed scale
            xs = self._input_rms_norm(xs)

        w, taps, bias = self._input_weights()
        qkv = F.linear(xs, w)  # (b, ctx+n, 3*inner), n = buf + t
        if self.conv is not None:
            qkv = self._causal_conv(qkv, n_ctx, taps, bias)  # (b, n, 3*inner)
        else:
            qkv = qkv[:, n_ctx:]
        if c.qk_activation == "silu":
            qkv = F.silu(qkv)  # (b, n, 3*inner); token 0 starts a chunk
        else:  # linear queries and keys, SiLU values
            qk_lin, v_lin = qkv.split([2 * c.inner_dim, c.inner_dim], dim=-1)
            qkv = torch.cat([qk_lin, F.silu(v_lin)], dim=-1)
        keys = qkv[..., c.inner_dim : 2 * c.inner_dim] if c.gate_keys else None  # conv'd, activated, not normed
        lr, log_eta, log_keep, eta, alpha = self._gates(xs[:, n_ctx:], return_aux, keys)  # (b, h, n)
        if skip is not None:
            lr = torch.where(skip[:, None, n_ctx:], 0.0, lr)  # θ = 0: a skipped token writes nothing

        with torch.autocast(device_type=xs.device.type, enabled=False):
            # one copy to head-major; q, k, v are then contiguous and the scan's (b h) reshapes are free
            qkv = rearrange(qkv, "b n (s h d) -> s b h n d", s=3, h=c.heads).to(self.state_dtype).contiguous()
            # split, not qkv[:2] / qkv[2]: an indexing op's backward zero-fills a gradient of the whole tensor
            qk, v = qkv.split([2, 1])
            if c.qk_center:
                qk = self._center(qk)
            qk = self._qk_features(qk)
            if c.qk_l2_norm:  # = F.normalize(eps=1e-12), as one multiply (its backward has no divisions)
                qk = qk * torch.rsqrt(qk.pow(2).sum(-1, keepdim=True).clamp_min(1e-24))
            q, k = qk.unbind(0)  # (b, h, n, d) each
        return q, k, v.squeeze(0), lr, log_eta, log_keep, eta, alpha

    def _fused_io(self, x: Tensor) -> bool:
        """Whether `InputProjection` computes this call's queries, keys, values and normed input (and
        `OutputProjection` its output, with the output norm and gate on): the default switches (input norm, conv, SiLU
        q/k, ℓ2 norms; no centring, gates that see the key, skipped tokens), no autocast, the input in the state
        dtype, not under torch.compile (which traces the plain ops)."""
        c = self.config
        return (FUSED_IO and self.input_norm is not None and self.conv is not None and c.qk_activation == "silu"
                and c.qk_l2_norm and not c.qk_center and c.qk_features == "none" and not c.gate_keys
                and not c.tie_keys and c.nonfinite != "skip"
                and x.dtype == self.state_dtype and not torch.is_autocast_enabled(x.device.type)
                and not torch.compiler.is_compiling())

    def _qk_features(self, x: Tensor) -> Tensor:
        """`MemoryConfig.qk_features` on queries and/or keys `[..., H, n, d]` (identity for "none")."""
        if self.config.qk_features == "pairs":
            return pair_features(x)
        if self.config.qk_features == "bilinear":
            return bilinear_features(x, self.qk_feature_maps.to(x.dtype))
        return x

    def _center(self, qk: Tensor) -> Tensor:
        """`qk` `[2, B, H, n, d]` minus the running means (`qk_center`). In training mode the means first move
        toward this call's (their average over the first 100 calls, then an EMA with weight 0.01; no gradient);
        in eval mode they are fixed, so a stream gives the same result in any split."""
        if self.training and not torch.compiler.is_compiling():
            with torch.no_grad():
                calls = int(self.qk_mean_calls)
                batch_mean = qk.detach().mean(dim=(1, 3)).to(self.qk_mean.dtype)  # (2, h, d)
                self.qk_mean.lerp_(batch_mean, max(1.0 / (calls + 1), 0.01))
                self.qk_mean_calls.add_(1)
        return qk - self.qk_mean[:, None, :, None, :].to(qk.dtype)

    def _input_weights(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The q/k/v projection `[3*inner, dim]`, conv taps `[3*inner, K]` and conv bias as the input side uses them
        (the parameters; with `tie_keys` the key rows are the query's and the key taps the query's one tap later)."""
        w = self.to_qkv.weight
        taps, bias = (self.conv.weight[:, 0], self.conv.bias) if self.conv is not None else (None, None)
        if not self.config.tie_keys:
            return w, taps, bias
        i = self.config.inner_dim
        w = torch.cat([w[:i], w[:i], w[2 * i :]])
        taps = torch.cat([taps[:i], F.pad(taps[:i, 1:], (0, 1)), taps[2 * i :]])  # key tap j = query tap j+1
        bias = torch.cat([bias[:i], bias[:i], bias[2 * i :]])
        return w, taps, bias

    def _causal_conv(self, qkv: Tensor, n_ctx: int, taps: Tensor, bias: Tensor) -> Tensor:
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
        return causal_depthwise_conv(qkv, taps, bias)  # (b, n, C)

    @property
    def _linear_fast_path(self) -> bool:
        """A linear memory (depth 1) without surprise clipping, surprise-gated writes or stop-gradient updates is
        a linear recurrence over chunks (those three need each token's gradient: `chunk_scan`)."""
        c = self.config
        return c.depth == 1 and c.surprise_clip == 0 and c.write_threshold == 0 and not c.stop_grad_updates


_COMPILED: list = []  # torch.compile(NeuralMemory._forward), made on first use


def pair_features(x: Tensor) -> Tensor:
    """`MemoryConfig.qk_features="pairs"`: φ(x)_i = x_i · x_{(i+1) mod d} over the last dim (conjunctions of two
    channels; the same width)."""
    return x * torch.roll(x, -1, dims=-1)


def bilinear_features(x: Tensor, maps: Tensor) -> Tensor:
    """`MemoryConfig.qk_features="bilinear"`: φ(x) = (A_h x) ⊙ (B_h x) for x `[..., H, n, d]`, `maps` `[2, H, d, d]`
    (rows A | B). With Gaussian A, B of variance 1/d, E[φ(q)·φ(k)] = (q·k)²: cosines square."""
    a = torch.einsum("...hnd,hed->...hne", x, maps[0])
    return a * torch.einsum("...hnd,hed->...hne", x, maps[1])


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
