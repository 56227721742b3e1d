"""The memory model M: a bias-free MLP `[..., head_dim] -> [..., head_dim]` (paper §3.1, L_M layers).

`MemoryMLP` is the module users evaluate with `torch.func.functional_call` on one sample's and one
head's weights. The chunked update never calls it: it runs the same network on weights batched over
(sample, head) with `forward_batched` and takes inner gradients analytically with `backward_batched`
(plain torch ops, so the outer loop can differentiate through them, and they run under
`torch.inference_mode()` where autograd is off).

Glossary: g = (sample, head) groups flattened, n = tokens, i/o = layer input/output features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _act(name: str, z: Tensor) -> Tensor:
    if name == "silu":
        return torch.nn.functional.silu(z)
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    return torch.relu(z)


def _act_grad(name: str, z: Tensor) -> Tensor:
    """d act(z) / dz, written with differentiable ops (second-order terms reach the outer loop)."""
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if name == "gelu":  # exact (erf) GELU: Φ(z) + z φ(z)
        cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return cdf + z * pdf
    return (z > 0).to(z.dtype)


def _act_grad2(name: str, z: Tensor) -> Tensor:
    """d² act(z) / dz² (the hand-written backward of `titans.memory.chunk_fused` differentiates act')."""
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1 - s) * (2 + z * (1 - 2 * s))
    if name == "gelu":  # φ(z)·(2 − z²)
        return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (2 - z * z)
    return torch.zeros_like(z)


class MemoryMLP(nn.Module):
    """`depth` bias-free linear layers `w0 .. w{depth-1}` (each `[in, out]`) with `activation` between.

    depth 1 is the linear memory M(k) = k W. Parameter names are the keys of `MemoryState.weights`.
    Its own parameters are the head-shared part of the learned initial weights M_0.
    """

    def __init__(self, head_dim: int, hidden_dim: int, depth: int, activation: str = "silu") -> None:
        super().__init__()
        self.depth = depth
        self.activation = activation
        dims = [head_dim] + [hidden_dim] * (depth - 1) + [head_dim]
        for layer, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            self.register_parameter(f"w{layer}", nn.Parameter(torch.randn(d_in, d_out) / math.sqrt(d_in)))

    @property
    def names(self) -> list[str]:
        return [f"w{layer}" for layer in range(self.depth)]

    def forward(self, x: Tensor) -> Tensor:  # [..., head_dim] -> [..., head_dim]
        for layer, name in enumerate(self.names):
            x = x @ getattr(self, name)
            if layer < self.depth - 1:
                x = _act(self.activation, x)
        return x

    def forward_batched(self, weights: list[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Run the MLP with per-group weights.

        weights[l]: `[g, i, o]`; x: `[g, n, head_dim]`.
        Returns (output `[g, n, head_dim]`, layer inputs h_l `[g, n, i]`, pre-activations z_l `[g, n, o]`).
        """
        inputs, pre = [], []
        for layer, w in enumerate(weights):
            inputs.append(x)
            z = torch.bmm(x, w)  # (g, n, o)
            pre.append(z)
            x = _act(self.activation, z) if layer < self.depth - 1 else z
        return x, inputs, pre

    def backward_batched(self, weights: list[Tensor], pre: list[Tensor], d_out: Tensor) -> list[Tensor]:
        """Per-token output-gradients δ_l `[g, n, o]` of every layer, given d loss / d output `d_out`.

        The per-token gradient of layer l's weights is the outer product h_l^T δ_l, so a weighted sum
        over tokens, Σ_t w_t h_{l,t}^T δ_{l,t}, is one matmul `h_l^T (w * δ_l)` — per-token gradients
        are never materialised.
        """
        deltas = [None] * self.depth
        delta = d_out
        for layer in range(self.depth - 1, -1, -1):
            deltas[layer] = delta
            if layer > 0:
                delta = torch.bmm(delta, weights[layer].transpose(1, 2)) * _act_grad(self.activation, pre[layer - 1])
        return deltas
