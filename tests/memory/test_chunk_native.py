"""The deep memory's native chunk scan (`titans.memory.chunk_native`, C++ loops) against the Python loop of
`titans.memory.chunk_fused.ChunkScan` it replaces: reads, errors, scale, surprise, the final state and every gradient
in float64, through the op alone and through whole memory calls. The float64 oracle tests
(tests/memory/test_neural_memory.py, test_reference.py) and the fused op's gradient tests against autograd and finite
differences (test_chunk_fused.py) run the native scan too: it is the default where it applies."""

import warnings

import pytest
import torch

from tests.memory.test_chunk_fused import assert_same_run, make, run
from titans.memory import chunk_native
from titans.memory.chunk_fused import ChunkScan

pytestmark = pytest.mark.skipif(not chunk_native.available(),
                                reason="the C++ chunk scan could not be built here (no compiler or ninja; see the "
                                       "warning of titans.memory.chunk_native); the Python loop runs instead")


def op_inputs(g: int, k: int, C: int, d: int, hid: int, momentum: bool, capped: bool, tail: bool, depth: int = 2,
              dtype=torch.float64, seed: int = 0, big_limit: float = 100.0) -> tuple:
    """Random `ChunkScan` inputs (meta, then the tensors), all requiring grad; with the cap, a small limit (it binds) in
    about half the chunks and a large one (it does not) in the others."""
    torch.manual_seed(seed)
    t = dict(dtype=dtype)
    dims = [d] + [hid] * (depth - 1) + [d]
    state = [torch.randn(g, i, o, **t) * 0.4 for i, o in zip(dims, dims[1:])]
    state += [torch.randn(g, i, o, **t) * 0.05 for i, o in zip(dims, dims[1:])]
    coef = -torch.rand(g, k, C, 2, **t) * 0.3
    limit = torch.where(torch.rand(g, k) < 0.5, 0.02, big_limit).to(dtype)
    args = [torch.randn(g, k, 2 * C, d, **t), torch.randn(g, C, d, **t) if tail else None, torch.randn(g, k, C, d, **t),
            coef, torch.rand(g, k, C, **t) if capped else None, limit if capped else None,
            0.5 + 0.4 * torch.rand(g, k, **t),
            *((0.3 + 0.5 * torch.rand(g, k, **t) for _ in range(2)) if momentum else (None, None)), *state]
    return ("silu", depth, momentum, capped, False), [a if a is None else a.requires_grad_() for a in args]


def op_run(meta, args, native: bool, monkeypatch, cotangent_seed: int = 1) -> tuple:
    """The op's outputs and the gradients of every input under a random linear loss of all outputs."""
    monkeypatch.setattr(chunk_native, "NATIVE", native)
    calls = []
    original = chunk_native.scan_forward
    monkeypatch.setattr(chunk_native, "scan_forward", lambda *a: calls.append(1) or original(*a))
    outs = ChunkScan.apply(meta, *args)
    assert calls == ([1] if native else [])
    torch.manual_seed(cotangent_seed)
    loss = sum((o * torch.randn_like(o)).sum() for i, o in enumerate(outs) if i != 3)  # surprise²: no gradient
    leaves = [a for a in args if a is not None]
    return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)


OP_CASES = [
    pytest.param(dict(momentum=True, capped=True), id="momentum-cap"),
    pytest.param(dict(momentum=True, capped=False), id="momentum"),
    pytest.param(dict(momentum=False, capped=True), id="cap-no-momentum"),
    pytest.param(dict(momentum=False, capped=False, tail=True), id="plain-unfinished-chunk"),
    pytest.param(dict(momentum=True, capped=True, tail=True, depth=3), id="depth3"),
    # a state of several row tiles in the forward's update, with remainders (`tile_rows`: 8 rows of 2100, 1256 of 13)
    # (states of ~1e9 where the cap does not bind: sums of 2100 terms in another order differ at ~3e-10 relative)
    pytest.param(dict(momentum=True, capped=True, d=13, hid=2100, big_limit=1e6, rtol=1e-9), id="row-tiles"),
    pytest.param(dict(momentum=False, capped=True, tail=True, d=13, hid=2100, big_limit=1e6, rtol=1e-9),
                 id="row-tiles-no-momentum"),
]

# the walks' two forms of δ W_lᵀ and gz W_lᵀ: through a transposed copy of W_l (states up to `SMALL_STATE`, or chunks
# above `UNTRANSPOSED_MAX_CHUNK`; kept for the backward) and as (W_l δᵀ)ᵀ (larger states in short chunks; every case
# here has chunks of at most 5 tokens)
PATHS = [pytest.param(chunk_native.SMALL_STATE, id="transposed"), pytest.param(0, id="untransposed")]


@pytest.mark.parametrize("small_state", PATHS)
@pytest.mark.parametrize("kw", OP_CASES)
def test_native_op_equals_the_python_op(kw, small_state, monkeypatch):
    """Reads (the unfinished chunk's too), errors, scale, surprise², the state after the last chunk and the gradients
    of every input, native vs the Python loop, in float64, over several chunks, sizes that leave vector remainders
    (d 5, hidden 19) and, with the cap, chunks where it binds beside chunks where it does not; both forms of the
    state's transposed products."""
    monkeypatch.setattr(chunk_native, "SMALL_STATE", small_state)
    kw = dict(tail=False, depth=2, d=5, hid=19) | kw
    rtol = kw.pop("rtol", 1e-10)
    meta, args = op_inputs(3, 4, 5, **kw)
    outs_n, grads_n = op_run(meta, args, True, monkeypatch)
    outs_p, grads_p = op_run(meta, args, False, monkeypatch)
    if kw["capped"]:
        scale = outs_p[2]
        assert (scale < 1).any() and (scale == 1).any(), "the cap must bind in some chunks and not in others"
    for got, want in zip(outs_n, outs_p):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=rtol)
    for got, want in zip(grads_n, grads_p):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=rtol)


MEMORY_CASES = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(fixed_lr=2.0), id="cap-binds"),
    pytest.param(dict(chunk_step_cap=0.0), id="no-cap"),
    pytest.param(dict(momentum=False), id="no-momentum"),
    pytest.param(dict(forgetting=False), id="no-forgetting"),
    pytest.param(dict(depth=3, chunk_size=3), id="depth3"),
]


@pytest.mark.parametrize("small_state", PATHS)
@pytest.mark.parametrize("kw", MEMORY_CASES)
def test_native_scan_equals_the_python_op_in_a_memory(kw, small_state, monkeypatch):
    """Whole memory calls: outputs, state, aux and every parameter's gradient, across calls that leave buffered
    tokens and an unfinished chunk (pieces 5 + 8 of chunk 4)."""
    monkeypatch.setattr(chunk_native, "SMALL_STATE", small_state)
    mem = make(**kw)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    monkeypatch.setattr(chunk_native, "NATIVE", False)
    want = run(mem, x, [5, 8], True, monkeypatch)
    monkeypatch.setattr(chunk_native, "NATIVE", True)
    got = run(mem, x, [5, 8], True, monkeypatch)
    assert_same_run(got, want, atol=1e-12, rtol=1e-10, grad_atol=1e-12, grad_rtol=1e-10)


def test_native_scan_in_float32_and_without_backward(monkeypatch):
    """float32 at the tiny model's sizes (the vector exp of the sigmoids; sums in another order): within 1e-5 of each
    tensor's largest entry (both are ~5e-7 from float64 there); and a forward that keeps nothing for a backward."""
    meta, args = op_inputs(2, 3, 16, 32, 128, momentum=True, capped=True, tail=True, dtype=torch.float32)
    outs_n, grads_n = op_run(meta, args, True, monkeypatch)
    outs_p, grads_p = op_run(meta, args, False, monkeypatch)
    for got, want in zip([*outs_n, *grads_n], [*outs_p, *grads_p]):
        torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=0)
    monkeypatch.setattr(chunk_native, "NATIVE", True)
    with torch.no_grad():
        outs_inf = ChunkScan.apply(meta, *args)
    for got, want in zip(outs_inf, outs_n):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_python_loop_keeps_what_the_native_scan_does_not_take(monkeypatch):
    """`NATIVE = False`, other activations, state beyond `MAX_STATE` and mixed dtypes keep the Python loop."""
    calls = []
    original = chunk_native.scan_forward
    monkeypatch.setattr(chunk_native, "scan_forward", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    make()(x)
    assert calls == [1]
    make(activation="gelu")(x)
    limit = chunk_native.MAX_STATE
    monkeypatch.setattr(chunk_native, "MAX_STATE", 8)
    make()(x)
    monkeypatch.setattr(chunk_native, "MAX_STATE", limit)
    monkeypatch.setattr(chunk_native, "NATIVE", False)
    make()(x)
    assert calls == [1]
    meta, args = op_inputs(1, 2, 2, 3, 4, momentum=True, capped=False, tail=False)
    args[2] = args[2].float()  # v in float32 beside float64 keys: not one dtype
    assert not chunk_native.supported("silu", 2, args[:9], args[9:])


def test_failed_build_warns_once_and_keeps_the_python_loop(monkeypatch):
    """A build that fails (no compiler here) warns once, naming why, and the op runs its Python loop."""
    from torch.utils import cpp_extension

    def fail(**_):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(chunk_native, "_LOADED", [])
    monkeypatch.setattr(cpp_extension, "load", fail)
    with pytest.warns(RuntimeWarning, match="Ninja is required"):
        assert not chunk_native.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not chunk_native.available()
        make()(torch.randn(1, 8, 16, dtype=torch.float64))


def test_native_backward_twice_with_retained_graph(monkeypatch):
    """A second backward through the same graph (retain_graph) reads the kept buffers again: they are not consumed,
    and the pool does not hand them out while the graph holds them."""
    monkeypatch.setattr(chunk_native, "NATIVE", True)
    meta, args = op_inputs(2, 3, 4, 5, 7, momentum=True, capped=True, tail=True)
    outs = ChunkScan.apply(meta, *args)
    loss = outs[0].pow(2).sum() + outs[4].sum()
    leaves = [a for a in args if a is not None]
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    ChunkScan.apply(meta, *args)[0].sum().backward()  # another call in between, its buffers from the pool
    second = torch.autograd.grad(loss, leaves)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_pool_reuses_freed_blocks_and_trims(monkeypatch):
    """The kept buffers and state-sized outputs of a call return to the pool when freed (`trim_pool` then frees
    them: bytes > 0, and nothing on a second trim); calls after a trim allocate afresh and give the same results."""
    monkeypatch.setattr(chunk_native, "NATIVE", True)
    meta, args = op_inputs(2, 3, 4, 5, 7, momentum=True, capped=True, tail=False)
    leaves = [a for a in args if a is not None]

    def call():
        outs = ChunkScan.apply(meta, *args)
        return torch.autograd.grad(outs[0].pow(2).sum() + outs[4].sum(), leaves)

    first = call()
    assert chunk_native.trim_pool() > 0
    assert chunk_native.trim_pool() == 0
    second = call()
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
