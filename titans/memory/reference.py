"""Reference oracle: the neural memory's update and read as a float64 token-by-token loop.

Slow and obvious on purpose. Gradients come from `torch.autograd.grad` of Eq. 12 (not from the
analytic backward of the fast path), so tests comparing the two check the maths, not a shared bug.

    ℓ(M; x_t) = ‖M(k_t) − v_t‖²                        (12)
    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; x_t)            (14)  t' = start of t's chunk (16-18)
    M_t = (1 − α_t) M_{t−1} + S_t                       (13)
    y_t = M_{c−1}(q_t)                                  (15)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from titans.memory.mlp import MemoryMLP


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
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Run Eq. 12-18 token by token in float64 for one sample and one head.

    init_weights: name -> `[*param_shape]`; queries/keys/values: `[T, d]`; gates: `[T]`.
    Only complete chunks are written (like the fast path). Returns the reads `[T, d]` and the
    weights and momentum after the last complete chunk.
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
            for (name, _), g in zip(chunk_start.items(), grads):
                s[name] = momentum_decay[t] * s[name] - lr[t] * g  # Eq. 14
                w[name] = (1 - forget[t]) * w[name] + s[name]  # Eq. 13
    return torch.cat(reads, dim=0), w, s
