"""MemoryMAG's model switches: the convex gate (identity at init, the convex mix of attention and memory
after it) and the trainable-parameter count."""

import pytest
import torch
from titans_tiny import MEMORY
from titans_tiny import patched as make

from titans.cache import LayerState
from titans.compat import output_cache
from titans.patch import count_trainable_parameters, patch_qwen3, titans_layers


def test_convex_gate_is_the_identity_at_init_and_learns(base, ids):
    ref = base(ids).logits
    model = patch_qwen3(base, "mag", window=ids.shape[1], gate="convex", memory=dict(MEMORY)).train()
    out = model(ids, labels=ids, output_memory_aux=True)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=0)
    assert all(r.gate.abs().max() == 0 for records in output_cache(out).memory_aux.values() for r in records)
    out.loss.backward()
    assert all(layer.memory_gate.scale.grad.abs().max() > 0 for layer in titans_layers(model).values())


def test_convex_gate_mixes_attention_and_memory(base, ids):
    """h + (1 − g)·attn + g·M(x̃), g = clamp(scale, 0, 1) ⊙ σ(W_g x̃ + b), computed by hand for one layer."""
    model = make(base, "mag", gate="convex", num_persistent=0)
    layer = titans_layers(model)[0]
    with torch.no_grad():
        layer.memory_gate.scale.uniform_(-0.5, 1.5)  # some channels clamped at 0 and at 1
        layer.memory_gate.proj.bias.fill_(0.0)
        h = base.model.embed_tokens(ids)
        pos = torch.arange(ids.shape[1])[None]
        cos, sin = model.model.rotary_emb(h, pos)
        got, _, _, _ = layer._step(h, cos, sin, LayerState(), None, False)
        x = layer.input_layernorm(h)
        attn, _, _ = layer.window_attention(x, cos, sin, LayerState())
        y, _ = layer.memory(x)
        g = layer.memory_gate.scale.clamp(0, 1) * torch.sigmoid(layer.memory_gate.proj(x))
        mixed = h + (1 - g) * attn + g * y
        expected = mixed + layer.mlp(layer.post_attention_layernorm(mixed))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (g.amax((0, 1)) == 0).any() and (g.amax((0, 1)) > 0.4).any()


@pytest.mark.parametrize("variant", ["mal", "mac"])
def test_convex_gate_is_mag_only(base, variant):
    with pytest.raises(ValueError, match="gate='convex' is invalid.*MAG only"):
        patch_qwen3(base, variant, gate="convex", memory=dict(MEMORY))


def _memory_parameters(D: int, heads: int, depth: int, expansion: int = 4, conv: int = 4) -> int:
    """Scalars of one NeuralMemory (all §4.4 parts on), written out from its definition."""
    d, inner = D // heads, D
    hidden = expansion * d
    mlp = d * hidden + (depth - 2) * hidden * hidden + hidden * d if depth > 1 else d * d
    return (D  # input RMSNorm weight
            + 3 * inner * D  # q/k/v projection
            + 3 * inner * conv + 3 * inner  # depthwise conv taps + bias
            + 3 * heads * D + 3 * heads  # θ/η/α projection
            + mlp + heads * mlp  # M_0: head-shared MLP + per-head offsets
            + heads * d  # output RMSNorm
            + D * inner + inner  # output gate
            + inner * D)  # output projection


def test_count_trainable_parameters_exact(base, ids):
    D = base.config.hidden_size  # 64, 2 layers
    base_total = sum(p.numel() for p in base.parameters())
    assert count_trainable_parameters(base) == base_total
    memory = _memory_parameters(D, heads=2, depth=2)
    gate = D * D + D + D  # W_g, b, scale
    model = patch_qwen3(base, "mag", window=8, memory=dict(MEMORY), num_persistent=3)
    assert count_trainable_parameters(model) == 2 * (memory + gate + 3 * D)
    base.requires_grad_(True)
    assert count_trainable_parameters(model) == base_total + 2 * (memory + gate + 3 * D)


def test_count_trainable_parameters_with_lora(tiny_path):
    from transformers import Qwen3ForCausalLM

    base = Qwen3ForCausalLM.from_pretrained(tiny_path)
    cfg = base.config
    model = patch_qwen3(base, "mag", window=8, memory=dict(MEMORY), gate="scalar", freeze="lora", lora_r=4)
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    D = cfg.hidden_size
    lora = 4 * ((D + q) + 2 * (D + kv) + (q + D))  # r·(in + out) for q, k, v, o
    memory = _memory_parameters(D, heads=2, depth=2)
    assert count_trainable_parameters(model) == 2 * (lora + memory + 2 * D)  # scalar gate: bias + scale


def test_switches_are_hydra_config_options():
    """`memory=mag` plus the switches from the command line reach the built model."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from titans.training.builders import build_model

    conf = str(Path(__file__).resolve().parents[2] / "conf")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "memory=mag", "model.arch.hidden_size=64", "model.arch.num_hidden_layers=1",
            "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "model.arch.head_dim=32",
            "model.arch.intermediate_size=128", "+memory.gate=convex", "+memory.memory.write_threshold=0.5",
            "+memory.memory.stop_grad_updates=true"])
    model, _ = build_model(cfg.model, cfg.memory)
    layer = titans_layers(model)[0]
    assert layer.memory_gate.form == "convex"
    assert layer.memory.config.write_threshold == 0.5 and layer.memory.config.stop_grad_updates
    assert model.config.titans["gate"] == "convex"


def test_convex_gate_with_memory_in_some_layers(base):
    """MAG with `memory_layers` (the CPU proof's one-memory MAG): the layers without memory are sliding-window
    layers whose unused gate must not make a convex MAG invalid (it raised for variant 'swa')."""
    model = patch_qwen3(base, "mag", gate="convex", memory_layers=[0], window=16, memory=dict(MEMORY))
    assert model.model.layers[0].memory is not None and model.model.layers[1].memory is None
