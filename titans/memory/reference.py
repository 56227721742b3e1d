"""Reference oracle: the neural memory's update and read as a float64 token-by-token loop.

Slow and obvious on purpose. Gradients come from `torch.autograd.grad` of Eq. 12 (not from the
analytic backward of the fast path), so tests comparing the two check the maths, not a shared bug.
`reference_forward` runs a whole `NeuralMemory` from its input: projections, conv, and the gates θ, η, α
computed here from the module's parameters (§4.4), so a wrong gate in the fast path is caught too;
`reference_memory` is the inner loop for one sample and head with given gates.

    ℓ(M; x_t) = ‖M(k_t) − v_t‖²                        (12)
    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; x_t)            (14)  t' = start of t's chunk (16-18)
    M_t = (1 − α_t) M_{t−1} + S_t                       (13)
    y_t = M_{c−1}(q_t)                                  (15)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call

from titans.memory.mlp import MemoryMLP

if TYPE_CHECKING:
    from titans.memory.neural_memory import NeuralMemory


def reference_memory(
    memory_model: MemoryMLP,
    init_weights: dict[str, Tensor],
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    lr: Tensor,
    momentum_decay: Tensor,
    forget: Tensor,
    chunk_size: int,
    init_momentum: dict[str, Tensor] | None = None,
    write_threshold: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Run Eq. 12-18 token by token in float64 for one sample and one head.

    init_weights: name -> `[*param_shape]`; queries/keys/values: `[T, d]`; gates: `[T]`.
    Only complete chunks are written (like the fast path). A token whose gradient norm ‖∇ℓ_t‖ is below
    `write_threshold` does not write (θ_t = 0). Returns the reads `[T, d]` and the weights and momentum
    after the last complete chunk.
    """
    f64 = torch.float64
    w = {n: t.detach().to(f64).clone() for n, t in init_weights.items()}
    s = {n: torch.zeros_like(t) for n, t in w.items()}
    if init_momentum is not None:
        s = {n: t.detach().to(f64).clone() for n, t in init_momentum.items()}
    queries, keys, values = (t.detach().to(f64) for t in (queries, keys, values))
    lr, momentum_decay, forget = (t.detach().to(f64) for t in (lr, momentum_decay, forget))
    model = MemoryMLP(
        memory_model.w0.shape[0], memory_model.w0.shape[1] if memory_model.depth > 1 else 1,
        memory_model.depth, memory_model.activation,
    ).to(f64)

    def loss(weights: dict[str, Tensor], k: Tensor, v: Tensor) -> Tensor:
        return (functional_call(model, weights, (k,)) - v).pow(2).sum()  # Eq. 12

    T = keys.shape[0]
    reads = []
    n_full = T - T % chunk_size
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        with torch.no_grad():
            reads.append(functional_call(model, w, (queries[start:end],)))  # Eq. 15
        if end > n_full:
            break
        chunk_start = {n: t.clone().requires_grad_(True) for n, t in w.items()}  # M_{t'}
        for t in range(start, end):
            grads = torch.autograd.grad(loss(chunk_start, keys[t], values[t]), list(chunk_start.values()))
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            theta = lr[t] if norm >= write_threshold else torch.zeros_like(lr[t])  # surprise-gated write
            for (name, _), g in zip(chunk_start.items(), grads):
                s[name] = momentum_decay[t] * s[name] - theta * g  # Eq. 14
                w[name] = (1 - forget[t]) * w[name] + s[name]  # Eq. 13
    return torch.cat(reads, dim=0), w, s


def reference_gates(memory: NeuralMemory, xs: Tensor, keys: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """θ (lr), η (momentum_decay), α (forget) `[B, H, T]` in float64 from the memory's gate projection.

    xs: `[B, T, dim]`, the memory's normed input (token 0 starts a chunk). Per token: logits = W_g xs_t + b
    (+ W_gk keys_t with `gate_keys`: keys `[B, T, inner]` after the conv and activation), one (θ, η, α)
    triple per head; θ = max_lr·σ(logit) (0 below `min_lr`), η = σ(logit), α = σ(logit), or the config's constants.
    With `per_token_gates=False` every token of a chunk uses the gates of the chunk's mean input.
    """
    c = memory.config
    f64 = torch.float64
    xs = xs.to(f64)
    B, T, _ = xs.shape
    if not c.per_token_gates:
        means = [xs[:, s : s + c.chunk_size].mean(1, keepdim=True).expand(-1, min(c.chunk_size, T - s), -1)
                 for s in range(0, T, c.chunk_size)]
        xs = torch.cat(means, dim=1)
    weight, bias = memory.to_gates.weight.detach().to(f64), memory.to_gates.bias.detach().to(f64)
    logits = xs @ weight.T + bias
    if c.gate_keys:
        logits = logits + keys.to(f64) @ memory.to_gates_keys.weight.detach().to(f64).T
    logits = logits.reshape(B, T, 3, c.heads).permute(2, 0, 3, 1)  # (3, B, H, T)
    lr = torch.full_like(logits[0], c.fixed_lr) if c.fixed_lr is not None else c.max_lr * torch.sigmoid(logits[0])
    if c.fixed_lr is None and c.min_lr > 0:  # sparse writes: a token whose θ is below min_lr does not write
        lr = torch.where(lr < c.min_lr, torch.zeros_like(lr), lr)
    if not c.momentum:
        eta = torch.zeros_like(logits[1])
    elif c.fixed_momentum_decay is not None:
        eta = torch.full_like(logits[1], c.fixed_momentum_decay)
    else:
        eta = torch.sigmoid(logits[1])
    if not c.forgetting:
        alpha = torch.zeros_like(logits[2])
    elif c.fixed_forget is not None:
        alpha = torch.full_like(logits[2], c.fixed_forget)
    else:
        alpha = torch.sigmoid(logits[2])
    return lr, eta, alpha


def reference_forward(memory: NeuralMemory, x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict]:
    """One call of `memory` on `x` `[B, T, dim]` from its initial state, in float64, token by token.

    Everything is recomputed here from the module's parameters: input RMSNorm, the q/k/v projection, the
    causal depthwise conv, SiLU, ℓ2-normalised q and k, the gates (`reference_gates`), the inner loop
    (`reference_memory`, per sample and head), the output norm, output gate and projection.
    A token whose input is not finite is handled as `config.nonfinite` says: with "skip" it is read and
    written as a zero input with θ = 0 (no write) and its output is NaN. `write_threshold` and
    `stop_grad_updates` apply too (the latter changes gradients only, not values).
    Returns (y `[B, T, dim]`, weights and momentum `[B, H, ...]` after the last complete chunk, a dict of
    the gates `lr`, `momentum_decay`, `forget` `[B, H, T]`). Needs `chunk_step_cap=0` and `surprise_clip=0`
    (paper-exact updates); for those switches compare with `reference_memory` and the fast path's gates.
    """
    c = memory.config
    if c.chunk_step_cap or c.surprise_clip:
        raise ValueError(
            f"reference_forward is paper-exact: it needs MemoryConfig.chunk_step_cap=0 and surprise_clip=0, got "
            f"{c.chunk_step_cap} and {c.surprise_clip}; test those with reference_memory and the fast path's gates."
        )
    f64 = torch.float64

    def p(t: Tensor) -> Tensor:
        return t.detach().to(f64)

    x = x.detach().to(f64)
    B, T, dim = x.shape
    H, d, inner = c.heads, c.head_dim, c.inner_dim
    skip = ~torch.isfinite(x).all(-1)  # (B, T)
    x = torch.where(skip[..., None], 0.0, x)
    xs = x
    if memory.input_norm is not None:
        xs = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * p(memory.input_norm)
    proj = xs @ p(memory.to_qkv.weight).T  # (B, T, 3*inner)
    if memory.conv is not None:  # causal depthwise: tap j multiplies token t-(K-1-j)
        K = c.conv_kernel
        taps, conv_bias = p(memory.conv.weight)[:, 0, :], p(memory.conv.bias)
        conv = torch.zeros_like(proj)
        for t in range(T):
            conv[:, t] = conv_bias
            for j in range(K):
                src = t - (K - 1 - j)
                if src >= 0:
                    conv[:, t] += taps[:, j] * proj[:, src]
        if c.tie_keys:  # k_t = q_{t-1}: the query's projection and taps applied to the tokens one step back
            for t in range(T):
                conv[:, t, inner : 2 * inner] = conv_bias[:inner]
                for j in range(1, K):  # the query's taps but its oldest (that token is outside the key's window)
                    src = t - 1 - (K - 1 - j)
                    if src >= 0:
                        conv[:, t, inner : 2 * inner] += taps[:inner, j] * proj[:, src, :inner]
        proj = conv
    qkv = proj.reshape(B, T, 3, H, d)
    act = torch.nn.functional.silu(qkv)
    qkv = act if c.qk_activation == "silu" else torch.cat([qkv[:, :, :2], act[:, :, 2:]], dim=2)  # v: always SiLU
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, d)
    gate_keys = qkv[:, :, 1].reshape(B, T, inner)  # what gate_keys sees: conv'd and activated, before centring
    if c.qk_center:  # the running means as they are (the oracle never updates them)
        q = q - p(memory.qk_mean[0])[None, :, None, :]
        k = k - p(memory.qk_mean[1])[None, :, None, :]
    if c.qk_features == "pairs":  # channel i times channel i+1 (the last times the first)
        q, k = (torch.stack([t[..., i] * t[..., (i + 1) % d] for i in range(d)], dim=-1) for t in (q, k))
    if c.qk_features == "bilinear":  # feature e of head h: (row e of A_h · x) × (row e of B_h · x)
        A, Bm = p(memory.qk_feature_maps[0]), p(memory.qk_feature_maps[1])  # (H, d, d)
        q, k = (torch.stack([(t[:, h] @ A[h].T) * (t[:, h] @ Bm[h].T) for h in range(H)], dim=1) for t in (q, k))
    if c.qk_l2_norm:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lr, eta, alpha = reference_gates(memory, xs, gate_keys)
    lr = torch.where(skip[:, None, :], 0.0, lr)  # a skipped token writes nothing
    model = memory.memory_model
    weights = {n: torch.zeros(B, H, *w.shape, dtype=f64) for n, w in model.named_parameters()}
    momentum = {n: torch.zeros_like(w) for n, w in weights.items()}
    reads = torch.zeros(B, H, T, d, dtype=f64)
    for b in range(B):
        for h in range(H):
            init = {n: p(w) + p(memory.init_offsets[n][h]) for n, w in model.named_parameters()}
            r, w, s = reference_memory(model, init, q[b, h], k[b, h], v[b, h], lr[b, h], eta[b, h], alpha[b, h],
                                       c.chunk_size, write_threshold=c.write_threshold)
            reads[b, h] = r
            for n in w:
                weights[n][b, h], momentum[n][b, h] = w[n], s[n]
    out = reads
    if memory.out_norm is not None:
        out = out / torch.sqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * p(memory.out_norm)[None, :, None, :]
    out = out.transpose(1, 2).reshape(B, T, inner)
    if memory.to_out_gate is not None:
        out = out * torch.sigmoid(x @ p(memory.to_out_gate.weight).T + p(memory.to_out_gate.bias))
    y = out @ p(memory.to_out.weight).T
    y = torch.where(skip[..., None], float("nan"), y)
    return y, weights, momentum, {"lr": lr, "momentum_decay": eta, "forget": alpha}
