"""TitansCache: detach for truncated BPTT, save/load through safetensors, streaming in segments."""

import pytest
import torch
from titans_tiny import patched
from transformers import DynamicCache

from titans.cache import TitansCache, TitansCacheLayer, detach_cache, load_cache, save_cache
from titans.compat import cache_kwargs
from titans.streaming import stream


def _cache_tensors(cache):
    for layer in cache.layers:
        if layer.keys is not None:
            yield layer.keys
            yield layer.values
        if isinstance(layer, TitansCacheLayer):
            yield from layer.memory.weights.values()
            yield from layer.memory.momentum.values()
            yield from layer.extra.values()


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_detach_cache_cuts_the_graph_and_keeps_values(base, ids, variant):
    model = patched(base, variant, freeze="none").train()
    cache = model(ids[:, :10], use_cache=True).past_key_values
    before = [t.clone() for t in _cache_tensors(cache)]
    assert any(t.requires_grad for t in _cache_tensors(cache))
    assert detach_cache(cache) is cache
    after = list(_cache_tensors(cache))
    assert not any(t.requires_grad for t in after)
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    loss = model(ids[:, 10:], labels=ids[:, 10:], **cache_kwargs(cache)).loss
    loss.backward()  # the second segment trains on its own graph


def test_detach_plain_dynamic_cache(base, ids):
    base.train()
    out = base(ids, use_cache=True)
    cache = out.past_key_values
    assert type(cache) is DynamicCache and cache.layers[0].keys.requires_grad
    detach_cache(cache)
    assert not cache.layers[0].keys.requires_grad
    assert detach_cache(None) is None
    with pytest.raises(TypeError, match="Cache"):
        detach_cache({"k": 1})


@pytest.mark.parametrize("variant", ["mal", "mac"])
def test_save_load_cache_continues_identically(base, ids, tmp_path, variant):
    model = patched(base, variant).eval()
    with torch.no_grad():
        cache = model(ids[:, :11], use_cache=True).past_key_values
        save_cache(cache, tmp_path / "c.safetensors")
        expected = model(ids[:, 11:], **cache_kwargs(cache)).logits
        loaded = load_cache(tmp_path / "c.safetensors")
        assert isinstance(loaded, TitansCache) and loaded.get_seq_length() == 11
        got = model(ids[:, 11:], **cache_kwargs(loaded)).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="save_cache"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        load_cache(tmp_path / "other.safetensors")


@pytest.mark.parametrize("variant", ["mag", "mac", "swa"])
def test_stream_equals_one_call(base, ids, variant):
    model = patched(base, variant).eval()
    with torch.no_grad():
        whole = model(ids).logits
    cache, last = stream(model, ids[:, :-1], segment_len=5, return_logits=True)
    torch.testing.assert_close(last, whole[:, -2], atol=1e-5, rtol=0)
    with torch.no_grad():
        nxt = model(ids[:, -1:], **cache_kwargs(cache)).logits
    torch.testing.assert_close(nxt[:, 0], whole[:, -1], atol=1e-5, rtol=0)
    bound = 7 if variant != "mac" else 8  # window - 1 tokens (MAG/SWA), the current segment (MAC)
    assert all(layer.keys.shape[2] <= bound for layer in cache.layers)
    if variant == "mac":
        assert all(layer.extra["lt_keys"].shape[2] <= bound for layer in cache.layers)


def test_generate_after_stream(base, ids):
    model = patched(base, "mal").eval()
    cache = stream(model, ids[:, :-1], segment_len=6)
    with torch.no_grad():
        cont = model.generate(ids, **cache_kwargs(cache), max_new_tokens=6, do_sample=False, pad_token_id=0)
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(cont, ref)


def test_stream_bad_segment(base, ids):
    with pytest.raises(ValueError, match="segment_len"):
        stream(patched(base), ids, segment_len=0)


def test_memory_learns_under_inference_mode(base, ids):
    model = patched(base, "mag").eval()
    with torch.no_grad():
        ref = model(ids, use_cache=True)
    with torch.inference_mode():
        out = model(ids, use_cache=True)
    torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
    w_ref, w = ref.past_key_values.layers[0].memory.weights, out.past_key_values.layers[0].memory.weights
    init = model.model.layers[0].memory.init_state(2).weights
    assert all(torch.equal(w[k], w_ref[k]) and not torch.equal(w[k], init[k]) for k in w)  # it wrote


def test_plain_dynamic_cache_is_upgraded_other_caches_rejected(base, ids):
    from transformers import StaticCache

    model = patched(base, "mag")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(ids[:, :5], **cache_kwargs(cache), use_cache=True)
        assert out.past_key_values is cache and isinstance(cache, TitansCache)
        static = StaticCache(config=model.config, max_cache_len=64)
        with pytest.raises(TypeError, match="DynamicCache"):
            model(ids[:, :5], **cache_kwargs(static), use_cache=True)


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_cache_passed_under_either_name_continues_the_memory(base, ids, variant):
    """transformers >= 5.24 names the cache `cache`, earlier releases `past_key_values`; a patched model must
    carry its memory state under both (5.24 dropped a `TitansCache` passed under the old name before
    titans.compat), and refuses two different caches at once."""
    import warnings

    model = patched(base, variant).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name is deprecated from 5.24 on
        whole = model(ids).logits[:, 12:]
        for name in ("cache", "past_key_values"):
            cache = model(ids[:, :12], use_cache=True).past_key_values
            assert isinstance(cache, TitansCache) and cache.layers[0].memory is not None
            got = model(ids[:, 12:], **{name: cache}, use_cache=True)
            assert got.past_key_values is cache and cache.get_seq_length() == ids.shape[1]
            torch.testing.assert_close(got.logits, whole, atol=1e-5, rtol=0)
        other = TitansCache(config=model.config)
        with pytest.raises((TypeError, ValueError), match="cache"):
            model.model(ids[:, :3], cache=cache, past_key_values=other)


def test_our_calls_use_the_installed_transformers_api(base, ids):
    """Streaming, generation, segmented training and activation checkpointing raise no deprecation warning
    from transformers: a renamed argument (as 5.24 renamed the cache) shows up here before it is removed."""
    import warnings

    from titans.compat import enable_activation_checkpointing
    from titans.training.bptt import shift_targets
    from titans.training.module import BPTTConfig, TitansLitModule

    model = patched(base, "mag", freeze="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            cache = stream(model.eval(), ids[:, :-1], segment_len=6)
            model.generate(ids, **cache_kwargs(cache), max_new_tokens=3, do_sample=False, pad_token_id=0)
        enable_activation_checkpointing(model)
        module = TitansLitModule(model.train(), BPTTConfig(segment_len=8, bptt_window=2))
        _, ok = module.run_segments(ids, shift_targets(ids.clone()), backward=True)
    assert ok
    # transformers attributes these to the caller's frame (torch's Module.__call__, this file, ...): match text
    deprecations = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "deprecated" in str(w.message)]
    assert not deprecations, deprecations
