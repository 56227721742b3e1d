"""The float64 oracle computes everything from the input and the module's parameters (projections, conv,
gates θ/η/α, inner loop, read-out), so a wrong gate or projection in the fast path cannot pass; the gates'
values at init are pinned."""

import math

import pytest
import torch

from titans.memory import MemoryConfig, NeuralMemory
from titans.memory.reference import reference_forward, reference_gates

CASES = [
    pytest.param(dict(chunk_size=1, depth=2), 9, id="chunk1-deep"),
    pytest.param(dict(chunk_size=4, depth=2), 13, id="chunk4-deep-unfinished"),
    pytest.param(dict(chunk_size=4, depth=1), 12, id="chunk4-linear"),
    pytest.param(dict(chunk_size=3, depth=1, momentum=False), 10, id="linear-no-momentum"),
    pytest.param(dict(chunk_size=3, depth=2, forgetting=False, activation="gelu"), 9, id="no-forgetting-gelu"),
    pytest.param(dict(chunk_size=4, depth=2, per_token_gates=False), 10, id="per-chunk-gates"),
    pytest.param(dict(chunk_size=2, depth=2, conv_kernel=0, input_norm=False, output_gate=False), 8, id="plain"),
    pytest.param(dict(chunk_size=3, depth=1, fixed_lr=0.2, fixed_momentum_decay=0.5, fixed_forget=0.1), 9,
                 id="fixed-gates"),
    pytest.param(dict(chunk_size=4, depth=1, qk_activation="none"), 10, id="linear-qk"),
    pytest.param(dict(chunk_size=3, depth=2, qk_activation="none"), 8, id="deep-linear-qk"),
    pytest.param(dict(chunk_size=4, depth=1, qk_center=True), 10, id="linear-centered-qk"),
    pytest.param(dict(chunk_size=3, depth=2, qk_center=True, qk_activation="none"), 8, id="deep-centered-linear-qk"),
    pytest.param(dict(chunk_size=4, depth=1, momentum=False, gate_keys=True), 10, id="linear-gates-see-keys"),
    pytest.param(dict(chunk_size=3, depth=2, gate_keys=True, qk_center=True), 8, id="deep-gates-see-keys-centered"),
    pytest.param(dict(chunk_size=4, depth=1, momentum=False, gate_keys=True, min_lr=0.25), 10, id="linear-lr-floor"),
    pytest.param(dict(chunk_size=3, depth=2, min_lr=0.25), 8, id="deep-lr-floor"),
    pytest.param(dict(chunk_size=4, depth=1, momentum=False, gate_keys=True, qk_features="pairs"), 10,
                 id="linear-pair-features"),
    pytest.param(dict(chunk_size=3, depth=2, qk_features="pairs", qk_center=True), 8, id="deep-pair-features-centered"),
    pytest.param(dict(chunk_size=4, depth=1, momentum=False, gate_keys=True, qk_init="induction", tie_keys=True,
                      qk_features="bilinear"), 10, id="linear-bilinear-features-tied"),
    pytest.param(dict(chunk_size=3, depth=2, qk_features="bilinear", qk_center=True), 8, id="deep-bilinear-centered"),
    pytest.param(dict(chunk_size=4, depth=1, momentum=False, gate_keys=True, qk_init="induction", tie_keys=True), 10,
                 id="linear-tied-keys"),
    pytest.param(dict(chunk_size=3, depth=2, qk_init="induction", tie_keys=True), 8, id="deep-tied-keys"),
]


def perturbed(**kw) -> NeuralMemory:
    """A float64 memory, every parameter moved off its init so each one matters (gates far from their biases)."""
    cfg = dict(dim=16, heads=2, expansion=2, conv_kernel=3, max_lr=0.5, chunk_step_cap=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(**cfg)).double()
    with torch.no_grad():
        for p in mem.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if mem.config.qk_center:  # means that are not zero, so a missing or wrong subtraction fails
            mem.qk_mean.normal_(std=0.3)
            mem.eval()
        mem.to_gates.weight.normal_(std=0.5)
    return mem


@pytest.mark.parametrize("kw,T", CASES)
def test_memory_equals_the_oracle_that_computes_its_own_gates(kw, T):
    mem = perturbed(**kw)
    x = torch.randn(2, T, 16, dtype=torch.float64)
    y, state, aux = mem(x, return_aux=True)
    y_ref, w_ref, s_ref, gates = reference_forward(mem, x)
    for name in ("lr", "momentum_decay", "forget"):
        torch.testing.assert_close(aux[name], gates[name], atol=1e-12, rtol=1e-10, msg=name)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-8)
    for n in w_ref:
        torch.testing.assert_close(state.weights[n], w_ref[n], atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(state.momentum[n], s_ref[n], atol=1e-10, rtol=1e-8)


def test_oracle_refuses_the_non_paper_switches():
    with pytest.raises(ValueError, match="chunk_step_cap=0 and surprise_clip=0"):
        reference_forward(NeuralMemory(MemoryConfig(dim=8)), torch.randn(1, 4, 8))


def test_gate_values_at_init():
    """Defaults: α ≈ σ(−6) ≈ 0.0025 (~85% of M survives a 64-token chunk), θ ≈ max_lr / 2, η ≈ σ(2) ≈ 0.88."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(dim=32, heads=2, chunk_step_cap=0.0))
    with torch.no_grad():
        _, _, aux = mem(torch.randn(2, 64, 32), return_aux=True)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert float(aux["forget"].mean()) == pytest.approx(sigmoid(-6), rel=0.03)
    assert float(aux["lr"].mean()) == pytest.approx(mem.config.max_lr / 2, rel=0.03)
    assert float(aux["momentum_decay"].mean()) == pytest.approx(0.8808, rel=0.01)
    # the oracle's own gates agree (so they pin the same values)
    xs = torch.randn(1, 5, 32)
    lr, eta, alpha = reference_gates(mem, xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert float(alpha.mean()) == pytest.approx(sigmoid(-6), rel=0.05) and float(eta.mean()) == pytest.approx(
        0.8808, rel=0.01)


def test_linear_qk_keeps_signed_keys_and_silu_values():
    """qk_activation="none": queries and keys are the conv's output (signed), values still pass SiLU."""
    mem = perturbed(chunk_size=4, depth=1, qk_activation="none")
    _, _, aux = mem(torch.randn(1, 8, 16, dtype=torch.float64), return_aux=True)
    assert (aux["keys"] < 0).any() and (aux["queries"] < 0).any()
    assert (aux["values"] >= -0.2785).all()  # SiLU's minimum is -0.278


def test_qk_activation_is_validated():
    with pytest.raises(ValueError, match=r"qk_activation='relu'.*'silu', 'none'"):
        MemoryConfig(dim=8, qk_activation="relu")


def test_centering_means_follow_training_calls_and_stay_fixed_in_eval():
    """qk_center: training calls move the running means to the data's mean query/key (so the centred keys of a
    stream no longer share one direction); eval calls leave them, so split calls equal one call."""
    torch.manual_seed(0)
    mem = NeuralMemory(MemoryConfig(dim=16, heads=2, depth=1, chunk_size=4, conv_kernel=3, qk_center=True))
    x = torch.randn(4, 32, 16) + 2.0  # inputs with a mean: keys share a direction
    for _ in range(3):
        mem(x)
    assert int(mem.qk_mean_calls) == 3 and mem.qk_mean.abs().sum() > 0
    _, _, aux = mem(x, return_aux=True)
    k = aux["keys"]  # centred, then normed
    cos = torch.einsum("bhtd,bhsd->bhts", k, k).mean()
    assert abs(float(cos)) < 0.2
    mem.eval()
    before = mem.qk_mean.clone()
    y, _ = mem(x)
    y1, st = mem(x[:, :13])
    y2, _ = mem(x[:, 13:], st)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    assert torch.equal(mem.qk_mean, before)
