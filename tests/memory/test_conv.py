"""The memory's causal depthwise conv (`titans.memory.conv`) against F.conv1d, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from titans.memory import conv as conv_mod
from titans.memory.conv import causal_depthwise_conv


def reference(x, w, b):
    """The same conv as conv1d on the transposed input: x [B, K-1+n, C], w [C, K]."""
    C, K = w.shape
    return F.conv1d(x.transpose(1, 2), w.unsqueeze(1), b, groups=C).transpose(1, 2)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("small", [True, False], ids=["taps-forward", "conv2d-forward"])
def test_conv_values_and_gradients_match_conv1d(batch, bias, fast, small, monkeypatch):
    if not fast:  # the aten weight-gradient path other devices take
        monkeypatch.setattr(conv_mod, "FAST_WEIGHT_GRAD_DEVICES", ())
    monkeypatch.setattr(conv_mod, "SMALL_CONV_TOKENS", 10**9 if small else 0)
    g = torch.Generator().manual_seed(0)
    C, K, n = 6, 4, 9
    x = torch.randn(batch, K - 1 + n, C, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, K, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, w) + ((b,) if bias else ())
    out, ref = causal_depthwise_conv(x, w, b), reference(x, w, b)
    assert out.shape == (batch, n, C)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(causal_depthwise_conv, (x, w, b))


def test_conv_gradient_only_for_what_requires_it():
    x = torch.randn(2, 7, 5, requires_grad=True)
    w = torch.randn(5, 3)  # frozen
    out = causal_depthwise_conv(x, w, None)
    (gx,) = torch.autograd.grad(out.sum(), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(reference(x, w, None).sum(), (x,))[0])
    x2 = torch.randn(2, 7, 5)  # frozen input, trained weight
    w2 = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(causal_depthwise_conv(x2, w2, None).sum(), (w2,))
    torch.testing.assert_close(gw, torch.autograd.grad(reference(x2, w2, None).sum(), (w2,))[0])


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("small", [True, False], ids=["taps-forward", "conv2d-forward"])
def test_conv_under_bf16_autocast_matches_conv1d_and_keeps_input_dtypes(fast, small, monkeypatch):
    """Under autocast the conv runs in bf16 like F.conv1d would; backward (outside autocast) must not mix
    the bf16 output gradient with the fp32 weight, and each gradient comes back in its input's dtype."""
    if not fast:
        monkeypatch.setattr(conv_mod, "FAST_WEIGHT_GRAD_DEVICES", ())
    monkeypatch.setattr(conv_mod, "SMALL_CONV_TOKENS", 10**9 if small else 0)
    g = torch.Generator().manual_seed(1)
    C, K, n = 8, 4, 12
    x = torch.randn(2, K - 1 + n, C, generator=g, requires_grad=True)
    w = torch.randn(C, K, generator=g, requires_grad=True)
    b = torch.randn(C, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_depthwise_conv(x, w, b)
        ref = reference(x, w, b)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    grad = torch.randn(out.shape, generator=g).to(torch.bfloat16)
    got = torch.autograd.grad(out, (x, w, b), grad)
    want = torch.autograd.grad(ref, (x, w, b), grad)
    for gi, wi, inp in zip(got, want, (x, w, b)):
        assert gi.dtype == inp.dtype == torch.float32
        torch.testing.assert_close(gi, wi.float(), rtol=5e-2, atol=5e-2 * wi.abs().max().item())
