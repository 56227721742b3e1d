"""One channel for what the model reports: `model(ids, output_memory_aux=True)` leaves each memory layer's
gates, θ/η/α, surprise and errors in `out.cache.memory_aux` (`out.past_key_values` before transformers 5.24);
`collect_diagnostics(out)` reads it. No hooks, no attributes written on modules, no shared context between layers."""

import pytest
import torch
import torch.nn.functional as F
from titans_tiny import VOCAB, tiny_config
from titans_tiny import patched as make
from transformers import Qwen3ForCausalLM

from titans.cache import MemoryAux, TitansCache
from titans.compat import cache_kwargs, output_cache
from titans.patch import collect_diagnostics, memory_diagnostics, titans_layers


def _expected(layer, hidden: torch.Tensor) -> dict[str, float]:
    """The diagnostics of a MAG layer computed from scratch: its memory called directly with return_aux."""
    x = layer.input_layernorm(hidden)
    _, state, aux = layer.memory(x, return_aux=True)
    g = torch.sigmoid(layer.memory_gate.proj(x))
    written = torch.isfinite(aux["surprise"])
    cos = F.cosine_similarity(aux["queries"], aux["errors"], dim=-1)[written]
    norm = torch.stack([torch.cat([w.flatten(2) for w in state.weights.values()], -1)[b].norm()
                        for b in range(x.shape[0])]).mean()
    return {
        "gate_mean": g.mean(), "gate_std": g.std(), "scale_abs_mean": layer.memory_gate.scale.abs().mean(),
        "surprise_norm": aux["surprise"][written].mean(), "lr_mean": aux["lr"].mean(),
        "momentum_decay_mean": aux["momentum_decay"].mean(), "forget_mean": aux["forget"].mean(),
        "memory_weight_norm": norm, "query_grad_cos": cos.mean(),
    }


def test_diagnostics_equal_the_memorys_own_aux(base, ids):
    """For a fixed model, every diagnostic equals the value computed from the layer's memory called directly."""
    model = make(base, "mag")
    with torch.no_grad():
        out = model(ids, output_memory_aux=True, output_hidden_states=True)
        diag = collect_diagnostics(out)
        assert diag == collect_diagnostics(output_cache(out)) == collect_diagnostics(memory_diagnostics(out))
        for i, layer in titans_layers(model).items():
            for name, value in _expected(layer, out.hidden_states[i]).items():
                assert diag[f"layer{i}/{name}"] == pytest.approx(float(value), rel=1e-4, abs=1e-6), (i, name)
    assert len(diag) == 2 * 9
    assert 0 < diag["layer0/forget_mean"] < 0.01 and diag["layer1/query_grad_cos"] != 0


def test_aux_comes_back_only_when_asked_and_carries_the_graph(base, ids):
    model = make(base, "mag").train()
    out = model(ids)
    assert output_cache(out).memory_aux == {} and collect_diagnostics(out) == {}
    out = model(ids, output_memory_aux=True)
    aux = output_cache(out).memory_aux
    assert sorted(aux) == [0, 1] and all(len(v) == 1 and isinstance(v[0], MemoryAux) for v in aux.values())
    record = aux[1][0]
    assert record.gate.shape == (2, ids.shape[1], 64) and record.gate.requires_grad
    assert record.memory["errors"].requires_grad and record.memory["lr"].shape == (2, 2, ids.shape[1])
    assert record.state.offset == ids.shape[1]
    # the next forward on the same cache reports its own tokens only, or nothing when not asked
    more = model(ids[:, :5], **cache_kwargs(output_cache(out)), output_memory_aux=True)
    assert output_cache(more).memory_aux[0][0].memory["lr"].shape[-1] == 5
    assert output_cache(model(ids[:, :5], **cache_kwargs(output_cache(more)))).memory_aux == {}
    with pytest.raises(ValueError, match="output_memory_aux=True needs use_cache=True"):
        model(ids, use_cache=False, output_memory_aux=True)
    with pytest.raises(TypeError, match="out = model\\(ids, output_memory_aux=True\\)"):
        collect_diagnostics(model)  # the old call: diagnostics no longer live on the model


def test_mac_reports_every_segment_and_diagnoses_the_last(base, ids):
    model = make(base, "mac")  # segment_len 8: 23 tokens are 3 pieces
    with torch.no_grad():
        out = model(ids, output_memory_aux=True)
    records = output_cache(out).memory_aux[0]
    assert [r.memory["lr"].shape[-1] for r in records] == [8, 8, 7]
    diag = collect_diagnostics(out)
    assert diag["layer0/lr_mean"] == pytest.approx(float(records[-1].memory["lr"].mean()), rel=1e-6)


def _module_attributes(model) -> dict:
    return {(name, key): id(value) for name, m in model.named_modules() for key, value in vars(m).items()
            if key not in ("_parameters", "_buffers", "_modules")}


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_nothing_is_stored_on_modules_by_a_forward(base, ids, variant):
    model = make(base, variant, cross_layer_query=True).train()
    before = _module_attributes(model)
    out = model(ids, output_memory_aux=True, labels=ids)
    out.loss.backward()
    assert _module_attributes(model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert output_cache(out).memory_read is None  # the cross-layer read lives only inside the forward


def test_cross_layer_read_travels_with_the_forward_past_layers_without_memory():
    """memory_layers [0, 2]: layer 1 has no memory; layer 2's query still sees layer 0's read, with or
    without a cache, and the projection learns."""
    cfg = tiny_config().to_dict()
    cfg.update(num_hidden_layers=3, layer_types=None)
    cfg = type(tiny_config())(**cfg)
    torch.manual_seed(0)
    model = make(Qwen3ForCausalLM(cfg), "mag", cross_layer_query=True, memory_layers=[0, 2]).train()
    layers = titans_layers(model)
    assert layers[0].cross_query is None and layers[1].memory is None and layers[2].cross_query is not None
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    assert layers[2].cross_query.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        torch.testing.assert_close(model(ids).logits, ref, atol=1e-6, rtol=0)
        layers[2].cross_query.weight.normal_(std=0.5)
        assert (model(ids, use_cache=False).logits - ref).abs().max() > 1e-4


def test_generate_keeps_working_with_a_cache_made_by_generate(base, ids):
    model = make(base, "mag", cross_layer_query=True)
    with torch.no_grad():
        out = model.generate(ids[:1, :9], max_new_tokens=4, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
    assert isinstance(output_cache(out), TitansCache) and output_cache(out).memory_read is None
