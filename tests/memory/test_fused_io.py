"""The memory's input and output sides as one op each (`titans.memory.fused_io.InputProjection`, `OutputProjection`,
hand-written backwards) against the plain ops autograd differentiates (`titans.memory.neural_memory.FUSED_IO = False`)
and against finite differences."""

import pytest
import torch

from tests.memory.test_chunk_fused import make as make_memory
from titans.memory import MemoryConfig, NeuralMemory, neural_memory
from titans.memory.fused_io import InputProjection, OutputProjection


def make(**kw) -> NeuralMemory:
    """test_chunk_fused's float64 memory, with an input-norm gain off 1 so its gradient is tested too."""
    mem = make_memory(**kw)
    with torch.no_grad():
        if mem.input_norm is not None:
            mem.input_norm.uniform_(0.5, 1.5)
    return mem


def run(mem: NeuralMemory, x: torch.Tensor, pieces: list[int], fused: bool, monkeypatch) -> tuple:
    """Outputs, state, aux and the gradients of a loss on all of them (parameters and input), through split calls."""
    monkeypatch.setattr(neural_memory, "FUSED_IO", fused)
    mem.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    state, ys, auxes = None, [], []
    for piece in x.split(pieces, dim=1):
        y, state, aux = mem(piece, state, return_aux=True)
        ys.append(y)
        auxes.append(aux)
    y = torch.cat(ys, 1)
    loss = (y.pow(2).sum() + sum(w.pow(2).sum() for w in state.weights.values())
            + sum(a["queries"].sum() + (a["keys"] * a["values"]).sum() + a["lr"].sum() for a in auxes))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in mem.named_parameters() if p.grad is not None}
    return y, state, auxes, {**grads, "input": x.grad}


CASES = [
    pytest.param(dict(), [5, 8], id="default"),
    pytest.param(dict(conv_kernel=5, heads=1), [2, 3, 8], id="kernel5-context-shorter-than-kernel"),
    pytest.param(dict(depth=1, momentum=False), [6, 7], id="linear-memory"),
    pytest.param(dict(output_gate=False, output_norm=False, conv_kernel=2), [13], id="one-call-plain-output"),
]


@pytest.mark.parametrize("kw,pieces", CASES)
def test_fused_io_equals_the_plain_ops(kw, pieces, monkeypatch):
    """Reads, state, aux (queries, keys, values, gates) and the gradients of every parameter and of the input, across
    calls that carry conv context and buffered tokens."""
    mem = make(**kw)
    calls = []
    def counted(op):
        original = op.apply
        return lambda *a: calls.append(op.__name__) or original(*a)

    for op in (InputProjection, OutputProjection):
        monkeypatch.setattr(op, "apply", counted(op))
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    y0, s0, a0, g0 = run(mem, x, pieces, False, monkeypatch)
    assert calls == []
    y1, s1, a1, g1 = run(mem, x, pieces, True, monkeypatch)
    output_fused = mem.out_norm is not None and mem.to_out_gate is not None
    assert calls == ["InputProjection", *(["OutputProjection"] if output_fused else [])] * len(pieces)
    torch.testing.assert_close(y1, y0, atol=1e-12, rtol=1e-10)
    for name in s0.weights:
        torch.testing.assert_close(s1.weights[name], s0.weights[name], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(s1.momentum[name], s0.momentum[name], atol=1e-12, rtol=1e-10)
    for aux1, aux0 in zip(a1, a0):
        for key in ("queries", "keys", "values", "lr", "forget", "momentum_decay", "surprise"):
            torch.testing.assert_close(aux1[key], aux0[key], atol=1e-12, rtol=1e-10, equal_nan=True)
    assert set(g1) == set(g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-10, rtol=1e-8, msg=name)


def test_zero_query_takes_the_clamped_norm_like_the_plain_ops(monkeypatch):
    """A query that is exactly zero (its conv weights and bias zero): the ℓ2 norm's clamp binds; the gradients still
    equal the plain ops' (none through the clamped norm)."""
    mem = make()
    with torch.no_grad():
        mem.conv.weight[:8].zero_()  # the query channels of head 0 (inner 16 = 2 heads × 8)
        mem.conv.bias[:8].zero_()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    y0, _, a0, g0 = run(mem, x, [8], False, monkeypatch)
    y1, _, a1, g1 = run(mem, x, [8], True, monkeypatch)
    assert (a1[0]["queries"][:, 0] == 0).all()
    torch.testing.assert_close(y1, y0, atol=1e-12, rtol=1e-10)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("n_ctx", [0, 2], ids=["first-call", "with-context"])
def test_input_projection_matches_finite_differences(n_ctx):
    """gradcheck of the hand-written backward alone: both outputs, every input (tokens, norm gain, projection, conv
    taps and bias)."""
    torch.manual_seed(0)
    B, N, dim, heads, d, K = 2, 5, 4, 2, 2, 3
    f64 = dict(dtype=torch.float64, requires_grad=True)
    args = (torch.randn(B, N, dim, **f64), (1 + 0.3 * torch.randn(dim, dtype=torch.float64)).requires_grad_(),
            torch.randn(3 * heads * d, dim, **f64), torch.randn(3 * heads * d, K, **f64),
            torch.randn(3 * heads * d, **f64), n_ctx, heads)
    assert torch.autograd.gradcheck(InputProjection.apply, args, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_output_projection_matches_finite_differences():
    """gradcheck of the output side's hand-written backward alone: reads, norm gain, input, gate and projection."""
    torch.manual_seed(0)
    B, H, t, d, dim = 2, 2, 3, 2, 5
    f64 = dict(dtype=torch.float64, requires_grad=True)
    args = (torch.randn(B, H, t, d, **f64), torch.randn(H, d, **f64), torch.randn(B, t, dim, **f64),
            torch.randn(H * d, dim, **f64), torch.randn(H * d, **f64), torch.randn(dim, H * d, **f64))
    assert torch.autograd.gradcheck(OutputProjection.apply, args, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(qk_center=True), dict(gate_keys=True), dict(nonfinite="skip"),
                                dict(qk_activation="none"), dict(input_norm=False), dict(conv_kernel=0),
                                dict(qk_l2_norm=False), dict(qk_features="pairs"), dict(qk_features="bilinear"),
                                dict(qk_init="induction", tie_keys=True)],
                         ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_switches_the_fused_ops_lack_take_the_plain_ops(kw, monkeypatch):
    calls = []
    monkeypatch.setattr(InputProjection, "apply", lambda *a: calls.append(1))
    monkeypatch.setattr(OutputProjection, "apply", lambda *a: calls.append(1))
    make(**kw)(torch.randn(1, 8, 16, dtype=torch.float64))
    assert calls == []


def test_autocast_takes_the_plain_ops(monkeypatch):
    """Under autocast the plain ops run (their projections in bf16, as before); the fused op computes in one dtype."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(dim=16, heads=2, depth=2, expansion=2, chunk_size=4, conv_kernel=3))
    calls = []
    original = InputProjection.apply
    monkeypatch.setattr(InputProjection, "apply", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(1, 8, 16)
    mem(x)
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mem(x)
    assert calls == [1]
