"""The neural memory's contract: fast path == float64 oracle, whole == pieces, causality, gradients."""

import re

import pytest
import torch
from torch.func import functional_call

from titans.memory import MemoryConfig, MemoryState, NeuralMemory, linear
from titans.memory.reference import reference_memory


def make(**kw) -> NeuralMemory:
    base = dict(dim=16, heads=2, depth=2, expansion=2, chunk_size=4, conv_kernel=3, max_lr=0.5)
    base.update(kw)
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(**base))
    # non-trivial gates so every coefficient path is exercised
    with torch.no_grad():
        mem.to_gates.weight.normal_(std=0.5)
    return mem


ORACLE_CASES = [
    pytest.param(dict(chunk_size=1, depth=2), 9, id="chunk1-deep"),
    pytest.param(dict(chunk_size=4, depth=2), 12, id="chunk4-deep"),
    pytest.param(dict(chunk_size=5, depth=2), 13, id="chunk5-not-dividing"),
    pytest.param(dict(chunk_size=4, depth=1), 11, id="chunk4-linear"),
    pytest.param(dict(chunk_size=3, depth=1, momentum=False), 10, id="linear-no-momentum"),
    pytest.param(dict(chunk_size=1, depth=1, forgetting=False), 7, id="linear-chunk1-no-forgetting"),
    pytest.param(dict(chunk_size=3, depth=2, momentum=False), 10, id="no-momentum"),
    pytest.param(dict(chunk_size=3, depth=2, forgetting=False), 10, id="no-forgetting"),
    pytest.param(dict(chunk_size=3, depth=3, momentum=False, forgetting=False, activation="gelu"), 10, id="plain-gelu"),
    pytest.param(dict(chunk_size=4, depth=2, per_token_gates=False), 10, id="per-chunk-gates"),
]


@pytest.mark.parametrize("kw,T", ORACLE_CASES)
def test_fast_path_matches_float64_oracle(kw, T):
    mem = make(**kw).double()
    x = torch.randn(2, T, 16, dtype=torch.float64)
    _, state, aux = mem(x, return_aux=True)
    init = mem.init_state(2)
    for b in range(2):
        for h in range(2):
            reads, w, s = reference_memory(
                mem.memory_model,
                {n: t[b, h] for n, t in init.weights.items()},
                aux["queries"][b, h], aux["keys"][b, h], aux["values"][b, h],
                aux["lr"][b, h], aux["momentum_decay"][b, h], aux["forget"][b, h],
                mem.config.chunk_size,
            )
            torch.testing.assert_close(aux["retrieved"][b, h], reads, atol=1e-10, rtol=1e-9)
            for n in w:
                torch.testing.assert_close(state.weights[n][b, h], w[n], atol=1e-10, rtol=1e-9)
                torch.testing.assert_close(state.momentum[n][b, h], s[n], atol=1e-10, rtol=1e-9)


def _oracle_weights(mem, aux, b=0, h=0):
    init = mem.init_state(aux["keys"].shape[0])
    return reference_memory(
        mem.memory_model, {n: t[b, h] for n, t in init.weights.items()},
        aux["queries"][b, h], aux["keys"][b, h], aux["values"][b, h],
        aux["lr"][b, h], aux["momentum_decay"][b, h], aux["forget"][b, h], mem.config.chunk_size,
    )[1]


@pytest.mark.parametrize("depth", [2, 1], ids=["deep", "linear"])
def test_errors_are_chunk_start_prediction_errors(depth):
    """aux `errors` = M_{t'}(k_t) − v_t with M_{t'} the oracle's weights at the start of t's chunk; their
    norms give `surprise` (‖∇ℓ_t‖ = 2‖error‖ for a linear memory); NaN for tokens not written yet."""
    mem = make(chunk_size=4, depth=depth).double()
    x = torch.randn(2, 14, 16, dtype=torch.float64)
    _, _, aux = mem(x, return_aux=True)
    assert aux["errors"].shape == aux["queries"].shape == (2, 2, 14, 8)
    assert aux["errors"][:, :, 12:].isnan().all() and aux["errors"][:, :, :12].isfinite().all()
    init = mem.init_state(2)
    for start in (0, 4, 8):
        w = reference_memory(
            mem.memory_model, {n: t[1, 0] for n, t in init.weights.items()},
            *(aux[key][1, 0, :start] for key in ("queries", "keys", "values", "lr", "momentum_decay", "forget")),
            mem.config.chunk_size,
        )[1] if start else {n: t[1, 0] for n, t in init.weights.items()}
        k, v = aux["keys"][1, 0, start : start + 4], aux["values"][1, 0, start : start + 4]
        expected = functional_call(mem.memory_model, w, (k,)) - v
        torch.testing.assert_close(aux["errors"][1, 0, start : start + 4], expected, atol=1e-10, rtol=1e-9)
    if depth == 1:
        expected = 2 * aux["keys"].norm(dim=-1) * aux["errors"].norm(dim=-1)
        torch.testing.assert_close(aux["surprise"], expected, equal_nan=True)


def test_errors_keep_their_graph():
    mem = make(chunk_size=4, depth=2)
    _, _, aux = mem(torch.randn(1, 8, 16), return_aux=True)
    aux["errors"].sum().backward()
    assert mem.to_qkv.weight.grad is not None and mem.to_qkv.weight.grad.abs().sum() > 0


def test_surprise_clip_scales_lr_and_matches_oracle():
    mem = make(surprise_clip=0.05, chunk_size=3, fixed_lr=0.3, chunk_step_cap=0.0).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    _, state, aux = mem(x, return_aux=True)
    expected = 0.3 * (0.05 / aux["surprise"]).clamp(max=1.0)
    assert (expected < 0.3).any(), "the clip must bind somewhere for this test to mean anything"
    torch.testing.assert_close(aux["lr"], expected)
    w = _oracle_weights(mem, aux)
    for n in w:
        torch.testing.assert_close(state.weights[n][0, 0], w[n], atol=1e-10, rtol=1e-9)


def test_chunk_step_cap_bounds_the_chunk_step_and_matches_oracle():
    mem = make(chunk_size=4, depth=1, fixed_lr=0.5, momentum=False, forgetting=False, chunk_step_cap=1.0).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    _, state, aux = mem(x, return_aux=True)
    per_chunk = aux["lr"].reshape(2, 2, 3, 4).sum(-1)  # no momentum/forgetting: Σ u_j = Σ θ_j
    torch.testing.assert_close(per_chunk, torch.ones_like(per_chunk))  # 4 × 0.5 = 2 capped to 1
    w = _oracle_weights(mem, aux, b=1, h=1)
    for n in w:
        torch.testing.assert_close(state.weights[n][1, 1], w[n], atol=1e-10, rtol=1e-9)


def _autograd_curvature(mlp, weights, key, value):
    """κ = ‖∇_W ℓ‖² / ‖2(M(k) − v)‖² for one token, by autograd (independent of the fast path's formula)."""
    w = {n: t.clone().requires_grad_(True) for n, t in weights.items()}
    err = functional_call(mlp, w, (key[None],))[0] - value
    grads = torch.autograd.grad(err.pow(2).sum(), list(w.values()))
    return sum(g.pow(2).sum() for g in grads) / (2 * err).pow(2).sum()


def test_chunk_step_cap_measures_deep_steps_by_their_curvature():
    """A deep memory's step along ∇ℓ_j moves its output at k_j by 2θκ_j, κ_j = ‖∇ℓ_j‖²/‖2e_j‖² (for a linear
    memory with unit keys κ = 1). The cap bounds Σ_j θ_j κ_j per chunk, κ at the chunk-start weights."""
    mem = make(chunk_size=4, depth=2, expansion=4, fixed_lr=2.0, momentum=False, forgetting=False).double()
    with torch.no_grad():  # large initial weights: κ ≫ 1, the regime where a cap on Σθ alone diverged
        for p in mem.memory_model.parameters():
            p.mul_(3.0)
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    _, state, aux = mem(x, return_aux=True)
    w = {n: t[0, 0] for n, t in mem.init_state(1).weights.items()}
    for chunk in range(2):
        tokens = range(4 * chunk, 4 * chunk + 4)
        kappa = torch.stack([_autograd_curvature(mem.memory_model, w, aux["keys"][0, 0, t], aux["values"][0, 0, t])
                             for t in tokens])
        assert (kappa > 2).all(), kappa  # the deep regime this test is about
        lr = aux["lr"][0, 0, 4 * chunk: 4 * chunk + 4]
        torch.testing.assert_close((lr * kappa).sum(), torch.tensor(1.0, dtype=torch.float64))
        _, w, _ = reference_memory(mem.memory_model, w, aux["queries"][0, 0, tokens], aux["keys"][0, 0, tokens],
                                   aux["values"][0, 0, tokens], lr, aux["momentum_decay"][0, 0, tokens],
                                   aux["forget"][0, 0, tokens], 4)
    for n in w:
        torch.testing.assert_close(state.weights[n][0, 0], w[n], atol=1e-10, rtol=1e-9)


def test_deep_memory_with_grown_weights_stays_bounded():
    """Regression: a trained depth-2 MAG memory (weights ~5× init) grew 150× in 64 tokens to NaN when the cap
    bounded Σθ only. Scaled-up initial weights, momentum, the default cap: the weights must stay bounded."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(dim=64, heads=2, depth=2, chunk_size=16, max_lr=0.5, lr_bias_init=4.0))
    with torch.no_grad():
        for p in mem.memory_model.parameters():
            p.mul_(4.0)
        w0 = max(p.norm().item() for p in mem.memory_model.parameters())
        x = torch.randn(1, 64, 64).repeat(1, 16, 1) + 0.3 * torch.randn(1, 1024, 64)  # repeated, similar keys
        y, state = mem(x)
    assert torch.isfinite(y).all()
    grown = max(t.norm(dim=(-2, -1)).max().item() for t in state.weights.values()) / w0
    assert grown < 3, grown


def test_default_config_stays_finite_on_repeated_tokens():
    """Without the chunk step cap, 64 identical keys add 64 stale steps and the memory diverges."""
    x = torch.randn(1, 1, 32).expand(1, 512, 32).contiguous()
    torch.manual_seed(0)
    y, state = NeuralMemory(MemoryConfig(dim=32, heads=2))(x)
    assert torch.isfinite(y).all() and all(torch.isfinite(w).all() for w in state.weights.values())
    torch.manual_seed(0)
    y_off, _ = NeuralMemory(MemoryConfig(dim=32, heads=2, chunk_step_cap=0.0, max_lr=1.0))(x)
    assert not torch.isfinite(y_off).all(), "the guard is what keeps this finite"


@pytest.mark.parametrize("chunk_size,depth,kw", [(1, 2, {}), (4, 2, {}), (5, 2, {}), (4, 1, {}),
                                                  (4, 1, dict(gate_keys=True)), (3, 2, dict(gate_keys=True))],
                         ids=["c1", "c4", "c5", "c4-linear", "c4-linear-gates-see-keys", "c3-gates-see-keys"])
def test_whole_equals_pieces_at_every_split(chunk_size, depth, kw):
    mem = make(chunk_size=chunk_size, depth=depth, **kw).double()
    if mem.to_gates_keys is not None:  # gates that depend on the key's context (zero at init)
        torch.nn.init.normal_(mem.to_gates_keys.weight, std=0.5)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y, state = mem(x)
    for a in range(1, 11):
        y1, s1 = mem(x[:, :a])
        y2, s2 = mem(x[:, a:], s1)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-10, rtol=1e-9)
        for n in state.weights:
            torch.testing.assert_close(s2.weights[n], state.weights[n], atol=1e-10, rtol=1e-9)
        assert s2.offset == state.offset == 11


LINEAR_FORMS = [
    pytest.param(dict(momentum=True), dict(lowrank_steps=lambda c, d: True), id="momentum-low-rank-chain"),
    pytest.param(dict(momentum=True), dict(lowrank_steps=lambda c, d: False), id="momentum-dense-chain"),
    pytest.param(dict(momentum=False), {}, id="block-form-one-block"),
    pytest.param(dict(momentum=False), dict(BLOCK_TOKENS=8), id="block-form-blocks-of-2-chunks-padded"),
    pytest.param(dict(momentum=False), dict(BLOCK_TOKENS=3), id="block-form-a-chunk-per-block"),
    pytest.param(dict(momentum=False, fixed_forget=0.6), dict(BLOCK_TOKENS=8), id="block-form-strong-forgetting"),
    pytest.param(dict(momentum=False, fixed_forget=1.0), dict(BLOCK_TOKENS=8), id="block-form-full-forgetting"),
]


@pytest.mark.parametrize("kw,patch", LINEAR_FORMS)
def test_linear_fast_path_equals_general_chunk_loop(kw, patch, monkeypatch):
    """Every form of the linear chain (block form without momentum, with any number of blocks; rank-c or d×d
    chunk steps with momentum) equals the general chunk loop: outputs, state, aux and gradients."""
    mem = make(depth=1, chunk_size=4, **kw).double()
    assert mem._linear_fast_path
    for key, value in patch.items():
        monkeypatch.setattr(linear, key, value)
    x = torch.randn(2, 14, 16, dtype=torch.float64, requires_grad=True)
    y_fast, s_fast, aux_fast = mem(x, return_aux=True)
    g_fast = torch.autograd.grad(y_fast.pow(2).sum(), [x, *mem.parameters()])
    monkeypatch.setattr(type(mem), "_linear_fast_path", property(lambda self: False))
    y_loop, s_loop, aux_loop = mem(x, return_aux=True)
    g_loop = torch.autograd.grad(y_loop.pow(2).sum(), [x, *mem.parameters()])
    torch.testing.assert_close(y_fast, y_loop, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_fast.weights["w0"], s_loop.weights["w0"], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_fast.momentum["w0"], s_loop.momentum["w0"], atol=1e-12, rtol=1e-10)
    for key in ("lr", "surprise", "retrieved", "errors"):
        torch.testing.assert_close(aux_fast[key], aux_loop[key], atol=1e-12, rtol=1e-10, equal_nan=True)
    for a, b in zip(g_fast, g_loop):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kw", [dict(depth=1), dict(depth=1, momentum=False), dict(depth=2, momentum=False)],
                         ids=["linear", "linear-no-momentum", "deep-no-momentum"])
def test_training_path_without_aux_equals_the_aux_path(kw):
    """return_aux=False skips the gate values, surprise and θ used; outputs, state and gradients are unchanged."""
    mem = make(chunk_size=4, **kw).double()
    x = torch.randn(2, 14, 16, dtype=torch.float64, requires_grad=True)
    outs = []
    for aux in (False, True):
        y1, s1, *_ = mem(x[:, :9], return_aux=aux)
        y2, s2, *_ = mem(x[:, 9:], s1, return_aux=aux)
        y = torch.cat([y1, y2], 1)
        outs.append((y, s2, torch.autograd.grad(y.pow(2).sum(), [x, *mem.parameters()])))
    (y_a, s_a, g_a), (y_b, s_b, g_b) = outs
    torch.testing.assert_close(y_a, y_b, atol=1e-12, rtol=1e-10)
    for n in s_a.weights:
        torch.testing.assert_close(s_a.weights[n], s_b.weights[n], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(s_a.momentum[n], s_b.momentum[n], atol=1e-12, rtol=1e-10)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_token_by_token_streaming_equals_whole():
    mem = make(chunk_size=3).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    y, _ = mem(x)
    state, outs = None, []
    for t in range(10):
        o, state = mem(x[:, t : t + 1], state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), y, atol=1e-10, rtol=1e-9)


def test_causality():
    mem = make(chunk_size=4).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    y, _ = mem(x)
    for t in (0, 3, 4, 7, 10):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
        y2, _ = mem(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], atol=1e-12, rtol=0)


def test_reads_use_previous_chunk_weights():
    """A chunk is read before it is written: changing tokens of chunk c cannot affect chunk c's reads
    except through the conv's short causal window."""
    mem = make(chunk_size=4, conv_kernel=0).double()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    _, _, aux = mem(x, return_aux=True)
    x2 = x.clone()
    x2[:, 5:] += 1.0  # later tokens of the second chunk
    _, _, aux2 = mem(x2, return_aux=True)
    # token 4 (first of chunk 2) reads weights after chunk 1, which tokens 5-7 cannot change
    torch.testing.assert_close(aux2["retrieved"][:, :, 4], aux["retrieved"][:, :, 4])


def test_batch_independence():
    mem = make().double()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    y, _ = mem(x)
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])
    y2, _ = mem(x2)
    torch.testing.assert_close(y2[0], y[0])
    torch.testing.assert_close(y2[2], y[2])
    y_single, _ = mem(x[2:3])
    torch.testing.assert_close(y_single[0], y[2], atol=1e-12, rtol=1e-10)


def test_gradient_reaches_every_parameter_from_last_chunk():
    mem = make(chunk_size=4)
    x = torch.randn(2, 12, 16)
    y, _ = mem(x)
    y[:, 8:].pow(2).sum().backward()  # last chunk only: reaches the write path only through the updates
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_gradient_reaches_previous_call_through_state():
    mem = make(chunk_size=4)
    x1 = torch.randn(1, 8, 16, requires_grad=True)
    _, s = mem(x1)
    y2, _ = mem(torch.randn(1, 4, 16), s)
    y2.sum().backward()
    assert x1.grad.abs().sum() > 0
    x1.grad = None
    _, s = mem(x1)
    y2, _ = mem(torch.randn(1, 4, 16), s.detach())
    y2.sum().backward()
    assert x1.grad is None


def test_zero_lr_and_no_forgetting_freeze_memory():
    mem = make(fixed_lr=0.0, forgetting=False)
    _, state = mem(torch.randn(2, 12, 16))
    init = mem.init_state(2)
    for n in state.weights:
        torch.testing.assert_close(state.weights[n], init.weights[n])


def test_full_forgetting_empties_memory():
    """α = 1 keeps nothing of M_{t-1}; with θ = 0 nothing new is written either: the memory is zero."""
    mem = make(fixed_forget=1.0, fixed_lr=0.0, chunk_size=4)
    _, state = mem(torch.randn(2, 9, 16))
    for n in state.weights:
        assert state.weights[n].abs().max() == 0
    # one incomplete chunk later nothing has been written yet: reads still see M_0
    _, fresh = mem(torch.randn(2, 3, 16))
    torch.testing.assert_close(fresh.weights["w0"], mem.init_state(2).weights["w0"])


def test_learns_in_eval_and_inference_mode():
    mem = make().eval()
    x = torch.randn(1, 12, 16)
    with torch.inference_mode():
        _, state = mem(x)
        init = mem.init_state(1)
    assert any((state.weights[n] - init.weights[n]).abs().max() > 1e-6 for n in state.weights)


def test_state_fp32_under_autocast():
    mem = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mem(torch.randn(1, 9, 16))
    assert all(w.dtype == torch.float32 for w in state.weights.values())
    assert torch.isfinite(y).all()


def test_functional_call_evaluates_one_head():
    mem = make()
    x = torch.randn(2, 8, 16)
    _, state, aux = mem(x, return_aux=True)
    k = aux["keys"][1, 1]
    out = functional_call(mem.memory_model, {n: w[1, 1] for n, w in state.weights.items()}, (k,))
    assert out.shape == k.shape


def test_safetensors_round_trip(tmp_path):
    mem = make()
    _, state = mem(torch.randn(2, 10, 16))
    state.save(tmp_path / "s.safetensors")
    loaded = MemoryState.load(tmp_path / "s.safetensors")
    assert loaded.offset == 10
    for n in state.weights:
        torch.testing.assert_close(loaded.weights[n], state.weights[n])
        torch.testing.assert_close(loaded.momentum[n], state.momentum[n])
    torch.testing.assert_close(loaded.buffer, state.buffer)
    y1, _ = mem(torch.ones(2, 3, 16), state)
    y2, _ = mem(torch.ones(2, 3, 16), loaded)
    torch.testing.assert_close(y1, y2)


@pytest.mark.parametrize("kind", ["zeros", "huge", "repeated"])
def test_finite_on_extreme_inputs(kind):
    mem = make(depth=3)
    if kind == "zeros":
        x = torch.zeros(1, 32, 16)
    elif kind == "huge":
        x = torch.randn(1, 32, 16) * 1e4
    else:
        x = torch.randn(1, 1, 16).expand(1, 32, 16).contiguous()
    x.requires_grad_(True)
    y, state = mem(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(w).all() for w in state.weights.values())


def test_select_reorders_batch():
    mem = make()
    _, state = mem(torch.randn(3, 6, 16))
    sub = state.select([2, 0])
    torch.testing.assert_close(sub.weights["w0"][0], state.weights["w0"][2])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(dim=16, heads=3), "heads"),
        (dict(dim=16, depth=5), "depth"),
        (dict(dim=16, chunk_size=0), "chunk_size"),
        (dict(dim=16, activation="tanh"), "activation"),
        (dict(dim=16, fixed_forget=2.0), "fixed_forget"),
        (dict(dim=0), "dim"),
        (dict(dim=16, qk_init="copy"), "qk_init"),
        (dict(dim=16, qk_init="induction", conv_kernel=1), "conv_kernel"),
    ],
    ids=["heads", "depth", "chunk", "activation", "forget", "dim", "qk_init", "induction-kernel"],
)
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        MemoryConfig(**kw)


def test_input_errors():
    mem = make()
    with pytest.raises(ValueError, match="dim=16"):
        mem(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="batch size"):
        mem(torch.randn(2, 4, 16), mem.init_state(1))
    with pytest.raises(TypeError, match="MemoryConfig"):
        NeuralMemory({"dim": 16})


def test_linear_memory_recalls_stored_pair():
    """Test-time learning through the module: write k -> v (one token, θ = 1/2, W_0 = 0), then a token with the
    same input (so q = k) reads back v exactly; a different key does not."""
    cfg = MemoryConfig(dim=8, heads=1, depth=1, chunk_size=1, conv_kernel=0, fixed_lr=0.5, momentum=False,
                       forgetting=False, input_norm=False, output_norm=False, output_gate=False, chunk_step_cap=0.0)
    torch.manual_seed(0)
    mem = NeuralMemory(cfg).double()
    with torch.no_grad():
        mem.memory_model.w0.zero_()  # W_0 = 0
        mem.to_out.weight.copy_(torch.eye(8))  # y = the raw read
        mem.to_qkv.weight.normal_()
        mem.to_qkv.weight[8:16] = mem.to_qkv.weight[:8]  # W_K = W_Q
    first, other = torch.randn(2, 8, dtype=torch.float64)
    x = torch.stack([first, first, other])[None]  # write k(first) -> v(first); read with q = k(first), then other
    y, _, aux = mem(x, return_aux=True)
    k, v = aux["keys"][0, 0], aux["values"][0, 0]
    torch.testing.assert_close(aux["queries"][0, 0, 1], k[0])  # same input, same projection: q_2 = k_1
    # one inner step with θ = 1/2 on ‖kW − v‖² from W = 0 gives W = k^T v, so a read with q = k returns v (‖k‖ = 1)
    torch.testing.assert_close(y[0, 1], v[0], atol=1e-12, rtol=0)
    assert (y[0, 0].abs().max()) == 0  # read before any write: W_0 = 0
    assert (y[0, 2] - v[0]).abs().max() > 0.1  # another key reads something else


def test_nonfinite_input_is_an_error_naming_its_position():
    mem = make()
    x = torch.randn(2, 9, 16)
    _, state = mem(x)
    bad = torch.randn(2, 9, 16)
    bad[1, 5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf\) at batch 1, token 5 of this call \(token 14 "
                                         r"of the sequence\).*nonfinite='skip'"):
        mem(bad, state)
    bad[1, 5, 3] = 0.0
    bad[0, 7, 0] = float("inf")
    with pytest.raises(ValueError, match="at batch 0, token 7"):
        mem(bad)


def test_nonfinite_check_on_decoded_tokens_and_sums_that_overflow():
    """The check sums x first: a decoded token (read-only call) with NaN or +inf/-inf is refused naming it, and
    finite inputs whose sum overflows float32 pass."""
    mem = make()
    _, state = mem(torch.randn(1, 9, 16))  # one token in the buffer: the next call is read-only
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = torch.randn(1, 1, 16)
        bad[0, 0, 4] = value
        with pytest.raises(ValueError, match=r"at batch 0, token 0 of this call \(token 9 of the sequence\)"):
            mem(bad, state)
    both = torch.randn(1, 1, 16)
    both[0, 0, :2] = torch.tensor([float("inf"), float("-inf")])  # sums to NaN
    with pytest.raises(ValueError, match="not finite"):
        mem(both, state)
    huge = torch.full((1, 1, 16), 3e38)  # finite; the sum overflows to inf
    y, _ = mem(huge, state)
    assert y.shape == (1, 1, 16)


def test_nonfinite_input_with_skip_leaves_the_state_clean_and_matches_the_oracle():
    """nonfinite='skip': the token is read and written as a zero input with θ = 0, its output is NaN, and the
    state stays finite; the same rule in the float64 oracle gives the same result, also when the bad token
    waits in the buffer across calls."""
    from titans.memory.reference import reference_forward

    mem = make(nonfinite="skip", chunk_step_cap=0.0).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    x[1, 5] = float("nan")
    x[1, 6, 2] = float("-inf")
    y, state = mem(x)
    assert all(torch.isfinite(w).all() for w in [*state.weights.values(), *state.momentum.values()])
    assert y[1, 5:7].isnan().all() and torch.isfinite(y[0]).all() and torch.isfinite(y[1, 7:]).all()
    y_ref, w_ref, s_ref, _ = reference_forward(mem, x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-8, equal_nan=True)
    for n in w_ref:
        torch.testing.assert_close(state.weights[n], w_ref[n], atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(state.momentum[n], s_ref[n], atol=1e-10, rtol=1e-8)
    clean = x.clone()
    clean[1] = 0.0
    _, clean_state = mem(clean)
    torch.testing.assert_close(state.weights["w0"][0], clean_state.weights["w0"][0])  # sample 0 untouched
    y1, s1 = mem(x[:, :6])  # the NaN token waits in the buffer (chunk 4: tokens 4, 5)
    y2, s2 = mem(x[:, 6:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, equal_nan=True)
    torch.testing.assert_close(s2.weights["w0"], state.weights["w0"])
    with pytest.raises(ValueError, match="nonfinite"):
        MemoryConfig(dim=16, nonfinite="ignore")


def test_state_of_another_head_count_is_refused_naming_both_shapes():
    _, state4 = make(heads=4)(torch.randn(1, 8, 16))
    mem2 = make(heads=2)
    want = (1, 2, *mem2.memory_model.w0.shape)
    msg = f"weights['w0'] has shape (1, 4, 4, 8) but this memory (heads=2, head_dim=8, depth=2) needs {want}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        mem2(torch.randn(1, 8, 16), state4)


def test_induction_init_key_is_previous_query_also_across_calls():
    mem = make(qk_init="induction", conv_kernel=5, depth=1)
    x = torch.randn(2, 23, 16)
    _, _, aux = mem(x, return_aux=True)
    assert torch.equal(aux["keys"][:, :, 1:], aux["queries"][:, :, :-1])
    # split calls: the carried conv context keeps k_t = q_{t-1} at the seam
    _, state, a1 = mem(x[:, :9], return_aux=True)
    _, _, a2 = mem(x[:, 9:], state=state, return_aux=True)
    torch.testing.assert_close(a2["keys"][:, :, 0], a1["queries"][:, :, -1])
    # the random (paper) init has no such relation
    _, _, r = make(conv_kernel=5, depth=1)(x, return_aux=True)
    assert (r["keys"][:, :, 1:] - r["queries"][:, :, :-1]).abs().max() > 0.1


@pytest.mark.parametrize("qk_init,expect_recall", [("induction", True), ("random", False)])
def test_induction_init_reads_back_what_followed_a_repeated_context(qk_init, expect_recall):
    """Write a token sequence once (exact delta rule: chunk 1, θ = 1), then repeat a 3-token context:
    the read at its last token is the value of the token that followed it the first time."""
    torch.manual_seed(1)
    cfg = MemoryConfig(dim=64, heads=1, depth=1, chunk_size=1, conv_kernel=4, qk_init=qk_init, fixed_lr=1.0,
                       momentum=False, forgetting=False, chunk_step_cap=0.0)
    mem = NeuralMemory(cfg)
    vocab = torch.randn(40, 64)
    seq = torch.randperm(40)[:12]
    ids = torch.cat([seq, seq[3:6]])  # context seq[3:6] again; seq[6] followed it
    _, _, aux = mem(vocab[ids][None], return_aux=True)
    read = aux["retrieved"][0, 0, -1]
    target = aux["values"][0, 0, 6]
    others = torch.cat([aux["values"][0, 0, :6], aux["values"][0, 0, 7:12]])
    cos = torch.nn.functional.cosine_similarity(read[None], target[None]).item()
    best_other = torch.nn.functional.cosine_similarity(read[None], others).max().item()
    recalled = cos > 0.6 and cos > best_other + 0.3  # neighbouring keys share context, so not exactly 1
    assert recalled == expect_recall, (cos, best_other)


def test_chunk_step_cap_holds_under_strong_forgetting():
    """The chunk transition of a linear memory along a unit key is A − 2Σu (A = Π(1−α)): with strong forgetting
    (A → 0) a cap of Σu ≤ 1 still allowed −2 per chunk, and a trained MAC memory grew 12× per 64 tokens to NaN.
    The cap is cap·(1 + A)/2, so the transition stays in [−1, 1]."""
    torch.manual_seed(0)
    cfg = MemoryConfig(dim=32, heads=1, depth=1, chunk_size=16, momentum=False, fixed_lr=1.0, fixed_forget=0.3)
    mem = NeuralMemory(cfg)
    x = torch.randn(1, 1, 32).expand(1, 1024, 32) + 0.1 * torch.randn(1, 1024, 32)  # near-identical keys
    with torch.no_grad():
        y, state, aux = mem(x, return_aux=True)
    assert torch.isfinite(y).all()
    assert state.weights["w0"].abs().max() < 50, state.weights["w0"].abs().max()
    decay = (1 - 0.3) ** 16
    beta = 0.7 ** torch.arange(15, -1, -1, dtype=torch.float32)  # β_j = Π_{i>j} (1 − α_i)
    u_sum = (aux["lr"].reshape(-1, 16) * beta).sum(-1)
    torch.testing.assert_close(u_sum, torch.full_like(u_sum, (1 + decay) / 2))  # the cap binds at (1 + A)/2


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 2], ids=["linear", "deep"])
def test_compiled_forward_equals_eager_with_autograd_and_varying_lengths(depth):
    """memory.compile=True: outputs, state and gradients equal eager to 1e-5 over calls of different lengths
    (a buffered partial chunk, a state that carries the graph, a detached one)."""
    kw = dict(dim=16, heads=2, depth=depth, expansion=2, chunk_size=4, conv_kernel=3, max_lr=0.5)
    torch.manual_seed(0)
    eager = NeuralMemory(MemoryConfig(**kw))
    compiled = NeuralMemory(MemoryConfig(**kw, compile=True))
    compiled.load_state_dict(eager.state_dict())
    xs = torch.randn(2, 31, 16).split([8, 8, 5, 10], dim=1)
    results = []
    for mem in (eager, compiled):
        state, ys = None, []
        for i, x in enumerate(xs):
            y, state = mem(x, state)
            ys.append(y)
            if i == 1:
                state = state.detach()
        y = torch.cat(ys, 1)
        results.append((y, state, torch.autograd.grad(y.pow(2).sum(), list(mem.parameters()))))
    (y_e, s_e, g_e), (y_c, s_c, g_c) = results
    torch.testing.assert_close(y_c, y_e, atol=1e-5, rtol=1e-5)
    for n in s_e.weights:
        torch.testing.assert_close(s_c.weights[n], s_e.weights[n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_c.momentum[n], s_e.momentum[n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_c.buffer, s_e.buffer)
    assert s_c.offset == s_e.offset == 31
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(depth=1), dict(conv_kernel=0, output_norm=False, output_gate=False),
                                dict(input_norm=False, qk_l2_norm=False), dict(depth=1, qk_activation="none"),
                                dict(qk_center=True), dict(depth=1, gate_keys=True), dict(depth=1, qk_features="pairs"),
                                dict(depth=1, qk_init="induction", tie_keys=True), dict(qk_features="bilinear")],
                         ids=["deep", "linear", "no-conv-norm-gate", "no-input-norm", "linear-qk", "centered-qk",
                              "gates-see-keys", "pair-features", "tied-keys", "bilinear-features"])
def test_read_only_path_equals_general_path(kw, monkeypatch):
    """Calls that complete no chunk take `_forward_read_only` (queries of the new tokens only); token by token and
    in pieces of 2 and 3, across chunk boundaries and from the first token on, it equals `_forward` on the same calls
    (outputs, state, gradients)."""
    mem = make(**{"chunk_size": 4, "conv_kernel": 3, **kw}).double()
    if mem.config.qk_center:  # fixed, non-zero means (eval mode: training calls would move them)
        mem.eval()
        with torch.no_grad():
            mem.qk_mean.normal_(std=0.3)
    if mem.to_gates_keys is not None:  # gates that depend on the key's context (zero at init)
        torch.nn.init.normal_(mem.to_gates_keys.weight, std=0.5)
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    calls = []
    real = NeuralMemory._forward_read_only
    monkeypatch.setattr(NeuralMemory, "_forward_read_only", lambda self, *a: calls.append(1) or real(self, *a))
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(NeuralMemory, "_read_only", lambda self, *a: False)
        for sizes in ([1] * 11, [2, 3, 2, 1, 3]):
            state, outs, t = None, [], 0
            for n in sizes:
                y, state = mem(x[:, t : t + n], state)
                outs.append(y)
                t += n
            y = torch.cat(outs, 1)
            runs.append((y, state, torch.autograd.grad(y.pow(2).sum(), [x, *mem.parameters()], allow_unused=True)))
    assert len(calls) == 9 + 3  # one by one: all but tokens 4 and 8 (they complete a chunk); pieces: the 1st, 3rd, 5th
    for (y_a, s_a, g_a), (y_b, s_b, g_b) in zip(runs[:2], runs[2:]):
        torch.testing.assert_close(y_a, y_b, atol=1e-12, rtol=1e-10)
        for name in s_a.weights:
            torch.testing.assert_close(s_a.weights[name], s_b.weights[name], atol=1e-12, rtol=1e-10)
            torch.testing.assert_close(s_a.momentum[name], s_b.momentum[name], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(s_a.buffer, s_b.buffer, atol=0, rtol=0)
        torch.testing.assert_close(s_a.conv_context, s_b.conv_context, atol=0, rtol=0)
        assert s_a.offset == s_b.offset == 11
        for a, b in zip(g_a, g_b):
            if a is None or b is None:
                assert a is None and b is None or (a if b is None else b).abs().max() == 0
            else:
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
