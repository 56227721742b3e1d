"""The deep memory's fused chunk scan (`titans.memory.chunk_fused.ChunkScan`, hand-written backward) against
autograd through the plain chunk loop (`titans.memory.chunk.FUSED = False`) and against finite differences.
Its forward is held to the float64 oracle by tests/memory/test_neural_memory.py (the fused path is the default)."""

import pytest
import torch

from titans.memory import MemoryConfig, NeuralMemory, chunk, chunk_fused
from titans.memory.chunk_fused import ChunkScan


def make(**kw) -> NeuralMemory:
    base = dict(dim=16, heads=2, depth=2, expansion=2, chunk_size=4, conv_kernel=3, max_lr=0.5)
    base.update(kw)
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(**base)).double()
    with torch.no_grad():
        mem.to_gates.weight.normal_(std=0.5)
    return mem


def run(mem: NeuralMemory, x: torch.Tensor, pieces: list[int], fused: bool, monkeypatch) -> tuple:
    """Outputs, state, aux and the gradients of a loss on all of them, through split calls."""
    monkeypatch.setattr(chunk, "FUSED", fused)
    mem.zero_grad(set_to_none=True)
    state, ys = None, []
    for piece in x.split(pieces, dim=1):
        y, state, aux = mem(piece, state, return_aux=True)
        ys.append(y)
    y = torch.cat(ys, 1)
    loss = (y.pow(2).sum() + sum(w.pow(2).sum() for w in state.weights.values())
            + sum((1.3 * m).sum() for m in state.momentum.values())
            + aux["errors"].nan_to_num().pow(2).sum() + aux["lr"].sum())
    loss.backward()
    return y, state, aux, {n: p.grad.clone() for n, p in mem.named_parameters() if p.grad is not None}

def assert_same_run(got, want, atol, rtol, grad_atol, grad_rtol):
    """Outputs, state (weights and momentum), aux (θ used, surprise, errors, reads) and gradients of two runs."""
    (y1, s1, a1, g1), (y0, s0, a0, g0) = got, want
    torch.testing.assert_close(y1, y0, atol=atol, rtol=rtol)
    for name in s0.weights:
        torch.testing.assert_close(s1.weights[name], s0.weights[name], atol=atol, rtol=rtol)
        torch.testing.assert_close(s1.momentum[name], s0.momentum[name], atol=atol, rtol=rtol)
    for key in ("lr", "surprise", "errors", "retrieved"):
        torch.testing.assert_close(a1[key], a0[key], atol=atol, rtol=rtol, equal_nan=True)
    assert set(g1) == set(g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=grad_atol, rtol=grad_rtol, msg=name)



CASES = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(fixed_lr=2.0), id="cap-binds"),
    pytest.param(dict(chunk_step_cap=0.0), id="no-cap"),
    pytest.param(dict(momentum=False), id="no-momentum"),
    pytest.param(dict(forgetting=False, activation="relu"), id="no-forgetting-relu"),
    pytest.param(dict(depth=3, activation="gelu", chunk_size=3), id="depth3-gelu"),
]


@pytest.mark.parametrize("kw", CASES)
def test_fused_scan_equals_autograd_through_the_chunk_loop(kw, monkeypatch):
    """Reads, state, aux and every parameter's gradient, also across calls that leave buffered tokens and an
    unfinished chunk (pieces 5 + 8 of chunk 4: the second call starts with a buffered token)."""
    mem = make(**kw)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    y0, s0, a0, g0 = run(mem, x, [5, 8], False, monkeypatch)
    y1, s1, a1, g1 = run(mem, x, [5, 8], True, monkeypatch)
    if kw.get("fixed_lr"):
        assert (a1["lr"][~a1["lr"].isnan()] < 2.0).any(), "the cap must bind for this case to test its backward"
    assert_same_run((y1, s1, a1, g1), (y0, s0, a0, g0), atol=1e-12, rtol=1e-10, grad_atol=1e-10, grad_rtol=1e-8)


def test_fused_scan_is_the_default_and_skipped_for_the_switches_it_lacks(monkeypatch):
    """The plain loop runs surprise clipping, surprise-gated writes and stop-gradient updates."""
    calls = []
    original = ChunkScan.apply
    monkeypatch.setattr(ChunkScan, "apply", lambda *a: calls.append(1) or original(*a))
    make()(torch.randn(1, 8, 16, dtype=torch.float64))
    assert calls == [1]
    for kw in (dict(surprise_clip=0.5), dict(write_threshold=0.1), dict(stop_grad_updates=True)):
        make(**kw)(torch.randn(1, 8, 16, dtype=torch.float64))
    assert calls == [1]


@pytest.mark.parametrize("activation,momentum,capped", [("silu", True, False), ("gelu", False, False),
                                                       ("silu", True, True)], ids=["silu-momentum", "gelu", "cap"])
def test_chunk_scan_backward_matches_finite_differences(activation, momentum, capped):
    """gradcheck of the hand-written backward on its own (no autograd loop involved): two chunks of 2 tokens and an
    unfinished chunk's read. Without the cap: gradients into every input. With a binding cap: one chunk, gradients
    into the gates' coefficients only (κ, a function of keys, values and the chunk-start weights, is a normaliser
    without gradient, so finite differences in those would see a dependence the scan leaves out on purpose)."""
    torch.manual_seed(0)
    g, k, C, d, hid = 1, 1 if capped else 2, 2, 3, 4
    f64 = dict(dtype=torch.float64, requires_grad=not capped)
    x = torch.randn(g, k, 2 * C, d, **f64)
    q_tail = torch.randn(g, C, d, **f64)
    v = torch.randn(g, k, C, d, **f64)
    state = [torch.randn(g, d, hid, **f64), torch.randn(g, hid, d, **f64),
             (0.1 * torch.randn(g, d, hid, dtype=torch.float64)).requires_grad_(not capped),
             (0.1 * torch.randn(g, hid, d, dtype=torch.float64)).requires_grad_(not capped)]
    coef = -torch.rand(g, k, C, 2, dtype=torch.float64, requires_grad=True)  # (−u, −s)
    decay = (0.5 + 0.4 * torch.rand(g, k, dtype=torch.float64)).requires_grad_()
    carry = [(0.3 + 0.5 * torch.rand(g, k, dtype=torch.float64)).requires_grad_() for _ in range(2)] if momentum \
        else [None, None]
    weight = limit = None
    if capped:
        weight = torch.rand(g, k, C, dtype=torch.float64, requires_grad=True)  # u + s·later
        limit = (0.05 + 0.05 * torch.rand(g, k, dtype=torch.float64)).requires_grad_()  # small: the cap binds
    meta = (activation, 2, momentum, capped, False)

    def f(*args):
        reads, errors, scale, _, *new = ChunkScan.apply(meta, *args)
        assert (scale < 1).all() if capped else (scale == 1).all()
        return reads, errors, scale, *new

    args = (x, q_tail, v, coef, weight, limit, decay, *carry, *state)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_forward_without_backward_equals_the_training_forward():
    """Without a backward the op keeps no per-chunk intermediates (and computes act' only where δ needs it);
    the values are the same."""
    mem = make()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    y, state = mem(x)
    with torch.inference_mode():
        y_inf, state_inf = mem(x)
    torch.testing.assert_close(y_inf, y.detach(), atol=0, rtol=0)
    for name in state.weights:
        torch.testing.assert_close(state_inf.weights[name], state.weights[name].detach(), atol=0, rtol=0)


def test_backward_inside_autocast_stays_in_the_state_dtype():
    """loss.backward() inside a bf16 autocast region: the op's backward runs in fp32 like its forward (it raised
    a dtype error, or would have computed in bf16)."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(dim=16, heads=2, depth=2, expansion=2, chunk_size=4, conv_kernel=3))
    x = torch.randn(1, 8, 16)
    grads = []
    for backward_inside in (False, True):
        mem.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, state = mem(x)
            loss = sum(w.pow(2).sum() for w in state.weights.values())
            if backward_inside:
                loss.backward()
        if not backward_inside:
            loss.backward()
        grads.append(mem.memory_model.w0.grad.clone())
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0])


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


COMPILED_CASES = [
    pytest.param(dict(), id="depth2-momentum-forgetting-cap"),
    pytest.param(dict(momentum=False, activation="gelu", chunk_step_cap=0.0, depth=3), id="depth3-gelu-plain"),
]


def check_compiled_scan(kw: dict, monkeypatch) -> None:
    """memory.compile_scan: the op's loops under torch.compile in blocks of chunks (2 here, so calls of 2 and 3 chunks
    run a block of 2 and then one of 1 as well) give the eager op's reads, state, aux and every parameter's gradient,
    across calls with a buffered token and an unfinished chunk (pieces 9 + 12 of chunk 4)."""
    monkeypatch.setattr(chunk_fused, "COMPILE_BLOCK", 2)
    # every (config, block length, backend) is one more graph of the same two functions: past dynamo's default limit
    # of 8 it would run them eagerly (the graph count below would then fail)
    with torch._dynamo.config.patch(recompile_limit=64):
        _check_compiled_scan(kw, monkeypatch)


def _check_compiled_scan(kw: dict, monkeypatch) -> None:
    eager, compiled = make(**kw), make(**kw, compile_scan=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    y0, s0, a0, g0 = run(eager, x, [9, 12], True, monkeypatch)
    before = compiled_graphs()
    y1, s1, a1, g1 = run(compiled, x, [9, 12], True, monkeypatch)
    assert compiled_graphs() >= before + 4, "forward and backward of a block of 2 and of 1 chunk compile"
    assert_same_run((y1, s1, a1, g1), (y0, s0, a0, g0), atol=1e-10, rtol=1e-8, grad_atol=1e-9, grad_rtol=1e-7)
    # a forward without backward stays eager: nothing compiles for it
    before = compiled_graphs()
    with torch.no_grad():
        y2, _ = compiled(x)
    assert compiled_graphs() == before
    torch.testing.assert_close(y2, eager(x)[0].detach(), atol=0, rtol=0)


@pytest.mark.parametrize("kw", COMPILED_CASES)
def test_compiled_scan_traces_to_the_eager_op(kw, monkeypatch):
    """The blocks as torch.compile traces them (one full graph each, in-place updates functionalised), run by the
    aot_eager backend (no code generation: seconds); the inductor build is the slow test below."""
    monkeypatch.setattr(chunk_fused, "COMPILE_BACKEND", "aot_eager")
    check_compiled_scan(kw, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kw", COMPILED_CASES)
def test_compiled_scan_equals_the_eager_op(kw, monkeypatch):
    """The same with inductor's C++ kernels (what `compile_scan` runs; ~50 s a case with an empty inductor cache)."""
    check_compiled_scan(kw, monkeypatch)


@pytest.mark.slow
def test_compiled_forward_around_the_compiled_scan_equals_eager(monkeypatch):
    """memory.compile with memory.compile_scan: the forward compiles around the op (a graph break at it), the op runs
    its compiled blocks; reads, state and gradients equal the eager op's."""
    eager, compiled = make(), make(compile_scan=True, compile=True)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    y0, s0, _, g0 = run(eager, x, [9, 12], True, monkeypatch)
    with torch._dynamo.config.patch(recompile_limit=64):
        y1, s1, _, g1 = run(compiled, x, [9, 12], True, monkeypatch)
    torch.testing.assert_close(y1, y0, atol=1e-10, rtol=1e-8)
    for name in s0.weights:
        torch.testing.assert_close(s1.weights[name], s0.weights[name], atol=1e-10, rtol=1e-8)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("kw,match", [
    (dict(compile_scan=1), "True or False"),
    (dict(compile_scan=True, depth=1), "depth=1"),
    (dict(compile_scan=True, surprise_clip=0.5), "surprise_clip=0.5"),
    (dict(compile_scan=True, stop_grad_updates=True), "stop_grad_updates=True"),
])
def test_compile_scan_is_refused_where_there_is_no_fused_scan(kw, match):
    with pytest.raises(ValueError, match=f"compile_scan.*{match}"):
        MemoryConfig(dim=16, **kw)
