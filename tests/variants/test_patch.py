"""patch_qwen3's API: options, config round trip, save/load, bad input, what memory adds beyond the window."""

import copy
import json

import pytest
import torch
from titans_tiny import VOCAB, patched, tiny_config
from transformers import Qwen3ForCausalLM

import titans
from titans.compat import cache_kwargs
from titans.config import TitansConfig
from titans.memory import MemoryConfig
from titans.patch import from_pretrained, load_memory, patch_qwen3, save_memory, titans_layers


def test_lazy_exports():
    assert titans.patch_qwen3 is patch_qwen3 and titans.from_pretrained is from_pretrained
    assert titans.TitansConfig is TitansConfig


def test_options_stored_in_config(base):
    model = patched(base, "mag", memory=MemoryConfig(dim=64, heads=2, chunk_size=4), layers=[1], gate="scalar")
    stored = model.config.titans
    assert stored["variant"] == "mag" and stored["layers"] == [1] and stored["gate"] == "scalar"
    assert stored["memory"]["dim"] == 64 and stored["memory"]["chunk_size"] == 4
    assert json.loads(json.dumps(stored)) == stored
    layer = titans_layers(model)[1]
    assert layer.memory.config.dim == 64 and layer.memory_gate.proj is None
    assert [n for n, _ in model.named_parameters() if n.startswith("model.layers.0.")] == [
        n for n, _ in base.named_parameters() if n.startswith("model.layers.0.")
    ]  # the unpatched layer is untouched


def test_base_parameter_names_unchanged(tiny_path, base):
    names = {n for n, _ in Qwen3ForCausalLM.from_pretrained(tiny_path).named_parameters()}
    model = patched(base, "mac")
    new = {n for n, _ in model.named_parameters()} - names
    assert names <= {n for n, _ in model.named_parameters()}
    assert new and all(n.split(".")[3] in ("memory", "memory_gate", "persistent", "longterm_query", "longterm_out")
                       for n in new)


@pytest.mark.parametrize("variant", ["mag", "mal", "mac", "swa"])
def test_save_pretrained_round_trip(base, ids, tmp_path, variant):
    model = patched(base, variant)
    with torch.no_grad():
        for p in model.parameters():  # make the memory parameters differ from any fresh init
            p.add_(0.01 * torch.randn_like(p))
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert loaded.config.titans == model.config.titans
    torch.testing.assert_close(loaded(ids).logits, ref, atol=0, rtol=0)


def test_centered_memory_keeps_its_running_means_through_save_and_load(base, ids, tmp_path):
    """qk_center's running means are buffers: patching accepts them, save_pretrained stores them, and the
    reloaded model reads with them (a model that lost them would answer differently)."""
    model = patched(base, "mag", memory=MemoryConfig(dim=64, heads=2, chunk_size=4, depth=1, qk_center=True))
    model.train()
    model(ids)  # a training call moves the means off zero
    model.eval()
    means = [layer.memory.qk_mean.clone() for layer in titans_layers(model).values()]
    assert means and all(m.abs().sum() > 0 for m in means)
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    for layer, m in zip(titans_layers(loaded).values(), means, strict=True):
        torch.testing.assert_close(layer.memory.qk_mean, m, atol=0, rtol=0)
    torch.testing.assert_close(loaded(ids).logits, ref, atol=0, rtol=0)


def test_patched_checkpoint_loads_into_plain_qwen3(base, tmp_path):
    model = patched(base, "mag")
    model.save_pretrained(tmp_path)
    plain = Qwen3ForCausalLM.from_pretrained(tmp_path)
    assert type(plain.model.layers[0]).__name__ == "Qwen3DecoderLayer"
    own = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p, own[name], atol=0, rtol=0)


def test_save_memory_load_memory(tiny_path, ids, tmp_path):
    model = patched(Qwen3ForCausalLM.from_pretrained(tiny_path), "mal")
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.01 * torch.randn_like(p))
        ref = model(ids).logits
    file = save_memory(model, tmp_path)
    assert file.exists() and not list(tmp_path.glob("*.tmp"))
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        assert all(".memory" in k or "memory_gate" in k or "persistent" in k for k in f.keys())
    # base parameters were perturbed above: load onto the same perturbed base to compare exactly
    fresh_base = Qwen3ForCausalLM.from_pretrained(tiny_path)
    fresh_base.load_state_dict({k: v for k, v in model.state_dict().items() if k in fresh_base.state_dict()})
    loaded = load_memory(fresh_base, tmp_path).eval()
    torch.testing.assert_close(loaded(ids).logits, ref, atol=0, rtol=0)


def test_load_memory_into_incompatible_base(base, tmp_path):
    save_memory(patched(base, "mag"), tmp_path)
    cfg = tiny_config()
    cfg.hidden_size, cfg.num_attention_heads = 32, 2
    other = Qwen3ForCausalLM(cfg)
    with pytest.raises(ValueError, match="hidden_size"):
        load_memory(other, tmp_path)


def test_from_pretrained_path_and_plain_dir(tiny_path, ids):
    model = patch_qwen3(str(tiny_path), "swa", window=4)
    assert model.config.titans["window"] == 4
    with pytest.raises(ValueError, match="plain model"):
        from_pretrained(tiny_path)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "variant, opts, match",
    [
        ("mat", {}, "variant"),
        ("mag", dict(layers=[2]), "layers"),
        ("mag", dict(layers=0), "layers"),
        ("mag", dict(window=2, memory=dict(chunk_size=4)), "window"),
        ("mac", dict(segment_len=6, memory=dict(chunk_size=4)), "segment_len"),
        ("mag", dict(windw=8), "unknown options"),
        ("mag", dict(memory=dict(depth=9)), "depth"),
        ("mag", dict(memory=dict(dim=32)), "memory.dim"),
        ("swa", {}, "window"),
        ("mag", dict(freeze="all"), "freeze"),
        ("mag", dict(gate="tanh"), "gate"),
        ("swa", dict(window=8, memory=dict(heads=2)), "memory"),
        ("mag", dict(layers=[1], memory_layers=[0]), "memory_layers"),
        ("mag", dict(memory_layers=[]), "memory_layers"),
        ("mag", dict(memory_layers=[5]), "memory_layers"),
        ("mag", dict(window=None, memory_layers=[0]), "window"),
        ("swa", dict(window=8, memory_layers=[0]), "memory_layers"),
    ],
    ids=["variant", "layer-range", "layers-0", "window<chunk", "segment%chunk", "typo", "memory-field",
         "memory-dim", "swa-no-window", "freeze", "gate", "swa-memory", "memory-layer-not-patched",
         "memory-layers-empty", "memory-layer-range", "memory-layers-no-window", "swa-memory-layers"],
)
def test_bad_options(base, variant, opts, match):
    with pytest.raises(ValueError, match=match):
        patch_qwen3(base, variant, **opts)


def test_not_qwen3():
    with pytest.raises(TypeError, match="Qwen3ForCausalLM"):
        patch_qwen3(torch.nn.Linear(2, 2), "mag")


def test_already_patched(base):
    model = patched(base)
    with pytest.raises(ValueError, match="already patched"):
        patch_qwen3(model, "mag", window=8)


def test_hub_name_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(ValueError, match="offline"):
        patch_qwen3("Qwen/Qwen3-nonexistent-0.6B", "mag", window=64)
    assert time.time() - t < 5


def test_left_padding_rejected(base, ids):
    model = patched(base)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match="left padding"):
        model(ids, attention_mask=mask)


def test_mask_check_when_continuing_a_cache_looks_at_the_new_columns(base, ids):
    """With a cache, only the new tokens' mask columns (and the one before) are checked: a hole there is refused,
    right padding (1 -> 0) passes; the columns of cached tokens were checked when they came (generate passes the
    whole mask every step: checking it all would cost O(tokens so far) per decoded token)."""
    model = patched(base)
    with torch.no_grad():
        first = model(ids[:, :10], attention_mask=torch.ones(2, 10, dtype=torch.long), use_cache=True)
        cache = first.past_key_values
        hole = torch.ones(2, 12, dtype=torch.long)
        hole[1, 10] = 0  # the first new token masked, the second not: a hole
        with pytest.raises(ValueError, match="left padding or holes"):
            model(ids[:, 10:12], attention_mask=hole, **cache_kwargs(cache), use_cache=True)
        right = torch.ones(2, 12, dtype=torch.long)
        right[1, 11] = 0  # right padding of sample 1
        right[0, 3] = 0  # a column of a cached (already written) token: not looked at again
        out = model(ids[:, 10:12], attention_mask=right, **cache_kwargs(cache), use_cache=True)
    assert out.logits.shape[:2] == (2, 2)


# ------------------------------------------------------------------------------------- memory beyond the window


@pytest.mark.parametrize("variant", ["mag", "mal", "mac"])
def test_only_memory_reaches_beyond_attention(base, variant):
    """A token far outside the attention span changes the last logits only through the memory."""
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 1] = (changed[0, 1] + 1) % VOCAB
    kw = dict(window=4, num_persistent=0) if variant != "mac" else dict(window=None, num_longterm=4)
    # scale 0: the memory contributes nothing; MAC's long-term tokens (memory reads) are cut too
    off = dict(kw, num_longterm=0) if variant == "mac" else kw
    memoryless = patched(copy.deepcopy(base), variant, identity_init=True, **off)
    last = slice(16, 24)  # MAC: the third segment; MAG/MAL: far beyond two windows of 4 in 2 layers
    torch.testing.assert_close(memoryless(ids).logits[:, last], memoryless(changed).logits[:, last], atol=0, rtol=0)
    model = patched(base, variant, **kw)
    assert (model(ids).logits[:, last] - model(changed).logits[:, last]).abs().max() > 1e-5


def test_save_memory_from_lora_model(tiny_path, ids, tmp_path):
    model = patched(Qwen3ForCausalLM.from_pretrained(tiny_path), "mag", freeze="lora", lora_r=4)
    assert type(model).__name__ == "PeftModel"
    with torch.no_grad():
        for layer in titans_layers(model).values():
            layer.memory_gate.scale.add_(0.5)
        ref_mem = {k: v.clone() for k, v in titans_layers(model)[0].state_dict().items() if "memory" in k}
    save_memory(model, tmp_path)
    loaded = load_memory(Qwen3ForCausalLM.from_pretrained(tiny_path), tmp_path, freeze="memory")
    got = titans_layers(loaded)[0].state_dict()
    for k, v in ref_mem.items():
        torch.testing.assert_close(got[k], v, atol=0, rtol=0)


def test_sharded_checkpoint_round_trip(base, ids, tmp_path):
    model = patched(base, "mac")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        ref = model(ids).logits
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    torch.testing.assert_close(from_pretrained(tmp_path).eval()(ids).logits, ref, atol=0, rtol=0)


# ------------------------------------------------------------------------------------- memory in some layers


@pytest.mark.parametrize("variant", ["mag", "mal", "mac"])
def test_memory_layers_others_are_windowed_attention(base, ids, tmp_path, variant):
    """memory_layers=[0]: layer 0 has the variant's memory, layer 1 is the sliding-window layer of variant swa
    (not the base layer's full attention); with the memory's contribution off the model equals the swa model."""
    window = dict(window=8) if variant == "mac" else {}
    model = patched(copy.deepcopy(base), variant, memory_layers=[0], **window)
    layers = titans_layers(model)
    assert type(layers[0]).variant == variant and layers[0].memory is not None
    assert type(layers[1]).variant == "swa" and layers[1].memory is None and layers[1].window == 8
    assert not [n for n, _ in model.named_parameters() if n.startswith("model.layers.1.memory")]
    assert model.config.titans["memory_layers"] == [0]
    model.save_pretrained(tmp_path)  # the layer classes come back from the config
    loaded = from_pretrained(tmp_path).eval()
    assert [type(la).variant for la in titans_layers(loaded).values()] == [variant, "swa"]
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    if variant == "mag":  # scale 0: MAG's memory adds nothing, so both layers are the swa layers
        off = patched(copy.deepcopy(base), "mag", memory_layers=[0], identity_init=True, num_persistent=0)
        swa = patched(copy.deepcopy(base), "swa", num_persistent=0)
        torch.testing.assert_close(off(ids).logits, swa(ids).logits, atol=1e-6, rtol=0)
        # layer 1 unpatched: full attention
        full = patched(copy.deepcopy(base), "mag", layers=[0], identity_init=True, num_persistent=0)
        assert (full(ids).logits - swa(ids).logits).abs().max() > 1e-4
