"""MemoryMAG's memory switches: surprise-gated writes (`write_threshold`) held to the float64 oracle with the same
rule, and stop-gradient fast updates (`stop_grad_updates`): same values, no gradient through the writes, a
smaller backward."""

import pytest
import torch

from titans.memory import MemoryConfig, NeuralMemory
from titans.memory.reference import reference_forward


def perturbed(**kw) -> NeuralMemory:
    cfg = dict(dim=16, heads=2, expansion=2, conv_kernel=3, max_lr=0.5, chunk_step_cap=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(**cfg))
    with torch.no_grad():
        for p in mem.parameters():
            p.add_(0.1 * torch.randn_like(p))
        mem.to_gates.weight.normal_(std=0.5)
    return mem


@pytest.mark.parametrize("depth", [2, 1], ids=["deep", "linear"])
def test_surprise_gated_writes_match_the_oracle_with_the_same_rule(depth):
    x = torch.randn(2, 14, 16, dtype=torch.float64)
    _, _, free = perturbed(depth=depth, chunk_size=4).double()(x, return_aux=True)
    first = free["surprise"][:, :, :4].flatten().sort().values  # first chunk: same weights with or without the rule
    threshold = float(first[7:9].mean())  # between two values: no token sits on the threshold
    mem = perturbed(depth=depth, chunk_size=4, write_threshold=threshold).double()
    y, state, aux = mem(x, return_aux=True)
    written = aux["surprise"][:, :, :12]
    skipped = written < threshold
    assert 0 < int(skipped.sum()) < skipped.numel(), "the rule must bind on some tokens and not on others"
    assert (aux["lr"][:, :, :12][skipped] == 0).all() and (aux["lr"][:, :, :12][~skipped] > 0).all()
    y_ref, w_ref, s_ref, _ = reference_forward(mem, x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-8)
    for n in w_ref:
        torch.testing.assert_close(state.weights[n], w_ref[n], atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(state.momentum[n], s_ref[n], atol=1e-10, rtol=1e-8)
    # the rule changes the result: without it the oracle's weights differ
    _, w_free, _, _ = reference_forward(perturbed(depth=depth, chunk_size=4).double(), x)
    assert (w_free["w0"] - w_ref["w0"]).abs().max() > 1e-4


def _loss_and_grads(stop: bool, x: torch.Tensor):
    mem = perturbed(depth=2, chunk_size=4, stop_grad_updates=stop, chunk_step_cap=1.0)
    y, state = mem(x)
    y2, _ = mem(x.flip(1), state)  # the second call reads what the first wrote
    loss = y.pow(2).sum() + y2.pow(2).sum()
    nodes, seen, todo = 0, set(), [loss.grad_fn]
    while todo:  # autograd nodes the backward will run
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        nodes += 1
        todo.extend(f for f, _ in fn.next_functions)
    loss.backward()
    return mem, y, y2, nodes


def test_stop_grad_updates_keep_values_and_cut_the_write_path(monkeypatch):
    from titans.memory import chunk

    monkeypatch.setattr(chunk, "FUSED", False)  # node counts of the plain loop (the fused op is one node)
    x = torch.randn(2, 24, 16)
    full, y_full, y2_full, nodes_full = _loss_and_grads(False, x)
    stop, y_stop, y2_stop, nodes_stop = _loss_and_grads(True, x)
    torch.testing.assert_close(y_stop, y_full, atol=1e-6, rtol=1e-5)  # the forward is the same
    torch.testing.assert_close(y2_stop, y2_full, atol=1e-6, rtol=1e-5)
    inner = full.config.inner_dim
    # write path: θ/η/α projection and the key/value rows of the projection get no gradient
    assert stop.to_gates.weight.grad is None or stop.to_gates.weight.grad.abs().max() == 0
    assert stop.to_qkv.weight.grad[inner:].abs().max() == 0
    assert full.to_gates.weight.grad.abs().max() > 0 and full.to_qkv.weight.grad[inner:].abs().max() > 0
    # read path and M_0 still learn (M_0 through the straight-through identity of every chunk)
    assert stop.to_qkv.weight.grad[:inner].abs().max() > 0 and stop.to_out.weight.grad.abs().max() > 0
    assert stop.memory_model.w0.grad.abs().max() > 0 and stop.init_offsets["w1"].grad.abs().max() > 0
    # the backward does far less: no graph through the inner forward/backward/update of any chunk
    assert nodes_stop < 0.5 * nodes_full, (nodes_stop, nodes_full)


def test_switch_errors_name_the_field():
    with pytest.raises(ValueError, match="write_threshold"):
        MemoryConfig(dim=8, write_threshold=-1.0)
    with pytest.raises(ValueError, match="stop_grad_updates"):
        MemoryConfig(dim=8, stop_grad_updates="yes")
    with pytest.raises(ValueError, match="gate_keys=True is invalid.*per_token_gates=False"):
        MemoryConfig(dim=8, gate_keys=True, per_token_gates=False)
    with pytest.raises(ValueError, match="gate_keys"):
        MemoryConfig(dim=8, gate_keys="yes")
    with pytest.raises(ValueError, match=r"qk_features='square' is invalid.*one of \('none', 'pairs', 'bilinear'\)"):
        MemoryConfig(dim=8, qk_features="square")
    with pytest.raises(ValueError, match=r"tie_keys=True is invalid.*unless qk_init='induction'"):
        MemoryConfig(dim=8, tie_keys=True)
    for bad in (-0.1, 0.5, True, "0.01"):  # max_lr 0.1 by default: a floor at or above it would stop every write
        with pytest.raises(ValueError, match=r"min_lr=.*a float in \[0, max_lr=0.1\)"):
            MemoryConfig(dim=8, min_lr=bad)


@pytest.mark.parametrize("depth", [1, 2])
def test_lr_floor_writes_only_tokens_above_it(depth):
    """`min_lr`: θ_t below the floor becomes exactly 0 — a sequence whose every θ is below it leaves the weights at
    M_0 (forgetting off), one token above it writes, and the tokens above keep the θ they had without the floor."""
    base = dict(depth=depth, chunk_size=4, momentum=False, forgetting=False)
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    plain = perturbed(**base).double()
    lr = plain(x, return_aux=True)[2]["lr"]
    floor = float(lr.flatten().sort().values[-3])  # all but the two largest θ (of 2 heads x 8 tokens) fall below it
    sparse = perturbed(**base, min_lr=floor).double()
    y, state, aux = sparse(x, return_aux=True)
    above = lr >= floor
    assert int(above.sum()) == 3 and torch.equal(aux["lr"][above], lr[above]) and bool((aux["lr"][~above] == 0).all())
    assert any(not torch.equal(state.weights[n], plain.init_state(1).weights[n]) for n in state.weights)
    silent = perturbed(**base, min_lr=float(lr.max()) + 1e-6).double()
    _, state, aux = silent(x, return_aux=True)
    assert bool((aux["lr"] == 0).all())
    for n, w0 in silent.init_state(1).weights.items():
        torch.testing.assert_close(state.weights[n], w0, atol=0, rtol=0)


def test_gates_that_see_keys_depend_on_the_context_and_start_as_the_papers():
    """`gate_keys`: θ/η/α of token t move when an earlier token inside the key's conv window changes (the paper's
    gates see token t alone); at init (zero W_gk) the gates equal the paper's, and W_gk gets gradient."""
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5] += 1.0  # token 5: inside the conv window (kernel 3) of tokens 6 and 7
    plain = perturbed(depth=1, chunk_size=4).double()
    gated = perturbed(depth=1, chunk_size=4, gate_keys=True).double()
    missing = gated.load_state_dict(plain.state_dict(), strict=False).missing_keys  # the same memory but W_gk
    assert missing == ["to_gates_keys.weight"]
    with torch.no_grad():
        gated.to_gates_keys.weight.zero_()
    for name in ("lr", "forget"):
        assert torch.equal(gated(x, return_aux=True)[2][name], plain(x, return_aux=True)[2][name])
    with torch.no_grad():
        gated.to_gates_keys.weight.normal_(std=0.5)
    for mem, moves in ((plain, False), (gated, True)):
        lr_a, lr_b = (mem(t, return_aux=True)[2]["lr"] for t in (x, x2))
        torch.testing.assert_close(lr_a[..., :5], lr_b[..., :5])  # causal: earlier tokens unchanged
        assert bool((lr_a[..., 6:] - lr_b[..., 6:]).abs().max() > 1e-6) == moves
    y, _ = gated(x.requires_grad_())
    (grad,) = torch.autograd.grad(y.pow(2).sum(), [gated.to_gates_keys.weight])
    assert grad.abs().sum() > 0


def test_pair_features_address_by_the_whole_context():
    """`qk_features="pairs"`: φ(k)_i = k_i·k_{i+1}. Two keys that agree on half their channels and are independent on
    the rest have cosine ~0.5; their pair features agree only where both channels of a pair do (~a quarter of the
    pairs), so the cosine falls to ~0.25 — a read is addressed by what the whole context shares, not by a part."""
    from titans.memory.neural_memory import pair_features

    torch.manual_seed(0)
    d, n = 256, 200
    shared = torch.randn(n, d // 2)
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(1))
    a = torch.cat([shared, torch.randn(n, d // 2)], dim=1)[:, perm]
    b = torch.cat([shared, torch.randn(n, d // 2)], dim=1)[:, perm]  # the same channels shared
    cos = torch.nn.functional.cosine_similarity
    plain, paired = cos(a, b).mean().item(), cos(pair_features(a), pair_features(b)).mean().item()
    assert 0.4 < plain < 0.6 and 0.15 < paired < 0.35, (plain, paired)
    # the map: channel i times channel i+1, the last times the first; same width
    x = torch.arange(1.0, 5.0)
    torch.testing.assert_close(pair_features(x), torch.tensor([2.0, 6.0, 12.0, 4.0]))


def test_bilinear_features_square_the_cosine_at_init():
    """`qk_features="bilinear"`: φ(x) = (A_h x) ⊙ (B_h x) with A, B drawn N(0, 1/d), so E[φ(q)·φ(k)] = (q·k)². Keys at
    cosine 0.5 (a shared template) read each other at ~0.25 after the ℓ2 norm; equal keys still at 1; the maps are
    trained (a gradient reaches both)."""
    from titans.memory.neural_memory import bilinear_features

    mem = NeuralMemory(MemoryConfig(dim=16, heads=2, head_dim=256, depth=1, qk_features="bilinear"))
    maps = mem.qk_feature_maps.detach()
    assert maps.shape == (2, 2, 256, 256) and abs(maps.std().item() - 256 ** -0.5) < 1e-3
    torch.manual_seed(0)
    n, d = 64, 256
    shared = torch.randn(2, n, d)
    a = torch.nn.functional.normalize(shared + torch.randn(2, n, d), dim=-1)  # cosine ~0.5 with b
    b = torch.nn.functional.normalize(shared + torch.randn(2, n, d), dim=-1)
    cos = torch.nn.functional.cosine_similarity
    plain = cos(a, b, dim=-1).mean().item()
    squared = cos(bilinear_features(a, maps), bilinear_features(b, maps), dim=-1).mean().item()
    assert 0.45 < plain < 0.55 and 0.15 < squared < 0.35, (plain, squared)
    same = cos(bilinear_features(a, maps), bilinear_features(a, maps), dim=-1)
    torch.testing.assert_close(same, torch.ones_like(same))
    x = torch.randn(1, 9, 16)
    y, _ = mem(x)
    (grad,) = torch.autograd.grad(y.pow(2).sum(), [mem.qk_feature_maps])
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
