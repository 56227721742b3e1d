"""The memory's causal depthwise convolution (§4.4), with a fast weight gradient on CPU.

`causal_depthwise_conv(x, weight, bias)`: x `[B, K-1+n, C]` token-major (its first K-1 tokens are context),
weight `[C, K]`, bias `[C]` or None -> `[B, n, C]`, out[b, t, c] = bias[c] + Σ_j weight[c, j]·x[b, t+j, c].

Forward and the input gradient run as a conv2d on a channels-last `[B, C, 1, K-1+n]` view of the
token-major tensor (no transposed copies); a forward of a few tokens is a weighted sum of the taps instead.
On CPU the weight gradient of oneDNN's depthwise conv is slow (2.9 ms of a 9 ms memory step at n=256, C=384,
K=16; it grows faster than n), so here it is computed as another depthwise conv: grad_w[c, j] =
Σ_t grad[t, c]·x[t+j, c] is the input convolved with the output gradient as a length-n kernel (0.5 ms), one
sample at a time. Other devices use aten's backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# devices whose weight gradient is computed here (elsewhere: aten's convolution_backward)
FAST_WEIGHT_GRAD_DEVICES: tuple[str, ...] = ("cpu",)
# up to this many output tokens (batch × n) the forward is `unfold · weight` summed over the taps (~25 µs at 16
# tokens, 384 channels, K 4) instead of oneDNN's conv, whose fixed cost is ~60 µs a call (decoding writes a chunk
# of 16 tokens every 16 calls); benchmarks/perf/streaming.py
SMALL_CONV_TOKENS = 32


def causal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise conv of `x` `[B, K-1+n, C]` with `weight` `[C, K]` (tap j multiplies token t+j of the padded
    input, i.e. lag K-1-j) and `bias` `[C]`: `[B, n, C]`."""
    return _DepthwiseConv.apply(x, weight, bias)


def _as_image(t: Tensor) -> Tensor:
    """`[B, N, C]` -> `[B, C, 1, N]`, a channels-last view when `t` is contiguous."""
    return t.transpose(1, 2).unsqueeze(2)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        C, K = weight.shape
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # cast as autocast would cast F.conv2d's inputs, and keep the casts for backward (which runs
            # outside autocast: grad, x and weight must agree there)
            dt = torch.get_autocast_dtype(dev)
            x, weight = x.to(dt), weight.to(dt)
            bias = None if bias is None else bias.to(dt)
        B, n = x.shape[0], x.shape[1] - K + 1
        with torch.autocast(dev, enabled=False):
            if B * n <= SMALL_CONV_TOKENS:  # a few tokens (decoding): the taps' weighted sum beats the conv's setup
                out = (x.unfold(1, K, 1) * weight).sum(-1)  # (b, n, C, K) -> (b, n, C)
                out = out if bias is None else out + bias
            else:
                out = F.conv2d(_as_image(x), weight.view(C, 1, 1, K), bias, groups=C)  # (b, C, 1, n)
                out = out.squeeze(2).transpose(1, 2)  # (b, n, C)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        C, K = weight.shape
        B, n, _ = grad.shape
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad.to(x.dtype).contiguous()  # (b, n, C): its image view is channels-last
        fast_w = need_w and x.device.type in FAST_WEIGHT_GRAD_DEVICES
        grad_x = grad_w = grad_b = None
        if need_x or (need_w and not fast_w):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                _as_image(grad), _as_image(x), weight.view(C, 1, 1, K), None, [1, 1], [0, 0], [1, 1], False,
                [0, 0], C, [need_x, need_w and not fast_w, False],
            )
            if grad_x is not None:
                grad_x = grad_x.squeeze(2).transpose(1, 2)  # (b, K-1+n, C)
            if grad_w is not None:
                grad_w = grad_w.view(C, K)
        if fast_w:
            # grad_w[c, j] = Σ_{b,t} grad[b, t, c]·x[b, t+j, c]: per sample, x (C channels, K-1+n long) convolved
            # with grad as a (C, 1, 1, n) depthwise kernel gives (C, K)
            grad_w = sum(
                F.conv2d(_as_image(x[b : b + 1]), grad[b].t().reshape(C, 1, 1, n), groups=C).view(C, K)
                for b in range(B)
            )
        if need_b and ctx.has_bias:
            grad_b = grad.sum((0, 1))
        x_dt, w_dt, b_dt = ctx.dtypes
        return (None if grad_x is None else grad_x.to(x_dt), None if grad_w is None else grad_w.to(w_dt),
                None if grad_b is None else grad_b.to(b_dt))
