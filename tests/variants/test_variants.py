"""Behaviour of every patched variant: identity at init, causality, batch independence, split
equivalence, generate with/without cache, gradients, activation checkpointing."""

import pytest
import torch
from titans_tiny import MEMORY, VOCAB
from titans_tiny import patched as make
from transformers import Qwen3ForCausalLM

from titans.cache import TitansCache, TitansCacheLayer
from titans.compat import cache_kwargs, enable_activation_checkpointing, output_cache
from titans.patch import collect_diagnostics, patch_qwen3, titans_layers

VARIANTS = ["mag", "mal", "mac", "swa"]


@pytest.mark.parametrize("variant", ["mag", "mal", "swa"])
def test_identity_at_init(base, ids, variant):
    ref = base(ids).logits
    kw = {} if variant == "swa" else dict(memory=dict(MEMORY))
    model = patch_qwen3(base, variant, window=ids.shape[1], **kw).eval()
    out = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_patched_differs_when_memory_is_on(base, ids, variant):
    ref = base(ids).logits
    out = make(base, variant)(ids).logits
    assert (out - ref).abs().max() > 1e-3  # the test below would pass trivially on an unpatched model


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(base, ids, variant):
    model = make(base, variant)
    out = model(ids).logits
    p = 13
    changed = ids.clone()
    changed[:, p] = (changed[:, p] + 1) % VOCAB
    out2 = model(changed).logits
    torch.testing.assert_close(out2[:, :p], out[:, :p], atol=1e-6, rtol=0)
    assert (out2[:, p:] - out[:, p:]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_independence(base, ids, variant):
    model = make(base, variant)
    both = model(ids).logits
    alone = model(ids[1:]).logits
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_split_equals_whole(base, ids, variant):
    model = make(base, variant)
    with torch.no_grad():
        whole = model(ids).logits
        for a in (1, 5, 8, 13, 22):
            first = model(ids[:, :a], use_cache=True)
            assert isinstance(first.past_key_values, TitansCache)
            second = model(ids[:, a:], **cache_kwargs(first.past_key_values), use_cache=True)
            torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5, rtol=0)
        # three pieces, one of a single token
        cache, pieces = None, []
        for s, e in ((0, 3), (3, 4), (4, 23)):
            out = model(ids[:, s:e], **cache_kwargs(cache), use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
        torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_by_token_decoding_equals_one_forward(base, ids, variant, monkeypatch):
    """Feeding the sequence one token per call (decoding: the memory's read-only path on every call that completes
    no chunk, mask-free window attention) gives the logits of one forward, across chunk boundaries (chunk 4) and past
    the window (8) and MAC's segment (8)."""
    from titans.memory import NeuralMemory

    read_only = []
    real = NeuralMemory._forward_read_only
    monkeypatch.setattr(NeuralMemory, "_forward_read_only", lambda self, *a: read_only.append(1) or real(self, *a))
    model = make(base, variant)
    with torch.no_grad():
        whole = model(ids).logits
        cache, steps = None, []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], **cache_kwargs(cache), use_cache=True)
            cache = output_cache(out)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=0)
    if variant != "swa":  # 23 tokens, chunk 4: 5 calls per layer complete a chunk, 18 only read
        assert len(read_only) == 18 * 2


@pytest.mark.parametrize("variant", ["mag", "mal", "swa"])
def test_kv_bounded_by_window(base, ids, variant):
    model = make(base, variant, window=6)
    with torch.no_grad():
        out = model(ids, use_cache=True)
    for layer in out.past_key_values.layers:
        assert isinstance(layer, TitansCacheLayer)
        assert layer.keys.shape[2] == 5 and layer.get_seq_length() == ids.shape[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_cache_equals_recompute(base, ids, variant):
    """Greedy decoding with the cache equals recomputing every step from scratch, on the scores (1e-5), not
    only the tokens."""
    model = make(base, variant)
    prompt = ids[:, :9]
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        cached = model.generate(prompt, **kw)
        recomputed = model.generate(prompt, use_cache=False, **kw)
    assert cached.sequences.shape == (2, 19)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(recomputed.scores), atol=1e-5, rtol=0)


def test_mixed_layers_split(base, ids):
    """Only layer 1 patched: layer 0 keeps Hugging Face's own attention and cache."""
    model = make(base, "mag", layers=[1])
    assert set(titans_layers(model)) == {1}
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :10], use_cache=True)
        second = model(ids[:, 10:], **cache_kwargs(first.past_key_values))
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["mag", "mal", "mac"])
def test_freeze_memory_gradients(base, ids, variant):
    model = make(base, variant, freeze="memory").train()
    model(ids, labels=ids).loss.backward()
    new = {id(p) for layer in titans_layers(model).values() for _, p in layer.titans_named_parameters()}
    for name, p in model.named_parameters():
        if id(p) in new:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        else:
            assert not p.requires_grad and p.grad is None, f"base parameter {name} got a gradient"


def test_identity_init_gradients_after_one_step(base, ids):
    """identity_init: the first backward reaches only `scale`; after one step every memory parameter learns."""
    model = patch_qwen3(base, "mag", window=8, memory=dict(MEMORY)).train()
    layers = titans_layers(model).values()
    model(ids, labels=ids).loss.backward()
    for layer in layers:
        for name, p in layer.titans_named_parameters():
            if name == "memory_gate.scale":
                assert p.grad.abs().sum() > 0
            else:
                assert p.grad is None or p.grad.abs().sum() == 0, name
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    opt.zero_grad()
    model(ids, labels=ids).loss.backward()
    for layer in layers:
        for name, p in layer.titans_named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} still without gradient after a step"


@pytest.mark.parametrize("variant", ["mag", "mal", "mac"])
def test_gradient_checkpointing_same_gradients(base, ids, variant):
    """Same gradients with activation checkpointing, with a cache carried across two segments."""

    def grads(model):
        model.zero_grad()
        first = model(ids[:, :10], labels=ids[:, :10], use_cache=True)
        second = model(ids[:, 10:], labels=ids[:, 10:], **cache_kwargs(first.past_key_values), use_cache=True)
        (first.loss + second.loss).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = make(base, variant, freeze="none").train()
    plain = grads(model)
    enable_activation_checkpointing(model)
    layer = titans_layers(model)[0]
    assert layer._titans_checkpointing
    calls = []
    step = layer._step
    layer._step = lambda *a: calls.append(1) or step(*a)
    ckpt = grads(model)
    assert len(calls) == 4  # two segments, each run forward and recomputed in backward
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_lora_trains_only_lora_and_memory(base, ids):
    model = make(base, "mag", freeze="lora", lora_r=4).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or (".memory" in n) or ("memory_gate" in n) or ("persistent" in n)
                             for n in trainable)
    assert any("lora_" in n for n in trainable) and any(".memory." in n for n in trainable)
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n


def test_diagnostics(base, ids):
    model = make(base, "mag")
    diag = collect_diagnostics(model(ids, output_memory_aux=True))
    keys = {"gate_mean", "gate_std", "scale_abs_mean", "surprise_norm", "lr_mean", "momentum_decay_mean",
            "forget_mean", "memory_weight_norm", "query_grad_cos"}
    assert {k.split("/")[1] for k in diag} == keys and {k.split("/")[0] for k in diag} == {"layer0", "layer1"}
    assert all(isinstance(v, float) and v == v and abs(v) < float("inf") for v in diag.values())
    assert 0 < diag["layer0/gate_mean"] < 1 and diag["layer0/scale_abs_mean"] == 1.0


def test_hidden_states_output(base, ids):
    model = make(base, "mal")
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, ids.shape[1], 64)


@pytest.mark.parametrize("variant", ["swa", "mal"])
def test_banded_attention_long_input(base, variant):
    """Long inputs attend in query blocks (O(T·window)); they must equal calls short enough for one block."""
    ids = torch.randint(0, VOCAB, (1, 150), generator=torch.Generator().manual_seed(5))
    model = make(base, variant, window=8)
    with torch.no_grad():
        whole = model(ids).logits  # 150 > 2 * 64: banded
        first = model(ids[:, :70], use_cache=True)  # 70, 80 <= 128: one block each
        second = model(ids[:, 70:], **cache_kwargs(first.past_key_values))
    torch.testing.assert_close(whole, torch.cat([first.logits, second.logits], 1), atol=1e-5, rtol=0)


def test_cross_layer_query(base, ids):
    """Layer 1's memory input sees layer 0's read: split-exact, and its projection learns."""
    model = make(base, "mag", cross_layer_query=True)
    layers = titans_layers(model)
    assert layers[0].cross_query is None and layers[1].cross_query is not None
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :9], use_cache=True)
        second = model(ids[:, 9:], **cache_kwargs(first.past_key_values))
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5, rtol=0)
    model.train()
    model(ids, labels=ids).loss.backward()
    assert layers[1].cross_query.weight.grad.abs().sum() > 0
    with torch.no_grad():
        layers[1].cross_query.weight.normal_(std=0.5)
    assert (model(ids).logits - whole).abs().max() > 1e-4  # the refinement path is live


def test_config_object_shared_between_models(tiny_path):
    from transformers import Qwen3ForCausalLM

    cfg = Qwen3ForCausalLM.from_pretrained(tiny_path).config
    first, second = Qwen3ForCausalLM(cfg), Qwen3ForCausalLM(cfg)
    patch_qwen3(first, "swa", window=4)
    assert not getattr(second.config, "titans", None)
    patch_qwen3(second, "swa", window=4)  # not "already patched"


def _beam_search(model, prompt, **kw):
    kw = dict(max_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True, **kw)
    with torch.no_grad():
        return model.generate(prompt, **kw)


@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_beam_search_scores_with_cache_equal_recompute(base, ids, variant):
    """Beam reordering and batch expansion reach the memory states too: every step's beam scores and the final
    sequence scores with the cache equal recomputing from scratch at 1e-5."""
    model = make(base, variant)
    prompt = ids[:1, :9]
    cached, recomputed = _beam_search(model, prompt), _beam_search(model, prompt, use_cache=False)
    assert cached.sequences.shape == (2, 15) and torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(recomputed.scores), atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.sequences_scores, recomputed.sequences_scores, atol=1e-5, rtol=0)


def test_beam_search_scores_move_when_the_memory_is_not_reordered(base, ids, monkeypatch):
    """The test above can fail: reorder only the KV (as a plain DynamicCache would) and the scores move."""
    model = make(base, "mag")
    prompt = ids[:1, :9]
    recomputed = _beam_search(model, prompt, use_cache=False)
    orders = []

    def kv_only(self, beam_idx):
        orders.append(beam_idx.tolist())
        memory, self.memory = self.memory, None
        TitansCacheLayer._map(self, lambda t: t.index_select(0, beam_idx.to(t.device)))
        self.memory = memory

    monkeypatch.setattr(TitansCacheLayer, "reorder_cache", kv_only)
    broken = _beam_search(model, prompt)
    assert any(order != sorted(order) for order in orders), "beams must actually reorder for this test to mean anything"
    assert (torch.stack(broken.scores) - torch.stack(recomputed.scores)).abs().max() > 1e-3


def test_titans_cache_reorder_cache_reorders_memory_states(base, ids):
    model = make(base, "mac")
    with torch.no_grad():
        cache = output_cache(model(ids[:, :11].repeat(2, 1), use_cache=True))  # 4 rows, 2 distinct samples
    before = {i: (s.weights["w0"].clone(), s.momentum["w0"].clone(), s.buffer.clone())
              for i, s in cache.memory_states.items()}
    extra = {i: dict(layer.extra) for i, layer in enumerate(cache.layers) if isinstance(layer, TitansCacheLayer)}
    order = torch.tensor([3, 0, 0, 2])
    cache.reorder_cache(order)
    for i, state in cache.memory_states.items():
        w, m, buf = before[i]
        assert torch.equal(state.weights["w0"], w[order]) and torch.equal(state.momentum["w0"], m[order])
        assert torch.equal(state.buffer, buf[order]) and state.offset == 11
        for k, v in extra[i].items():
            assert torch.equal(cache.layers[i].extra[k], v[order]), k


def test_swa_matches_hugging_face_sliding_window(tiny_path, ids):
    """Our window mask equals Qwen3's own sliding-window attention (same weights, same window)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config.from_pretrained(tiny_path)
    cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 6, 0
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    hf = Qwen3ForCausalLM.from_pretrained(tiny_path, config=cfg).eval()
    ours = patch_qwen3(Qwen3ForCausalLM.from_pretrained(tiny_path), "swa", window=6).eval()
    full = Qwen3ForCausalLM.from_pretrained(tiny_path).eval()
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids).logits
        assert (full(ids).logits - ref).abs().max() > 1e-4  # the window matters at this length
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_window_one_and_persistent_tokens(base, ids):
    """window=1: a token sees only itself and the persistent tokens, which every query sees."""
    model = patch_qwen3(base, "swa", window=1, num_persistent=2).eval()
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % VOCAB
    with torch.no_grad():
        out, out2 = model(ids).logits, model(changed).logits
        diff = (out2 - out).abs().amax(dim=(0, 2))
        assert diff[5] > 1e-4 and diff[torch.arange(len(diff)) != 5].max() == 0
        titans_layers(model)[0].persistent.add_(1.0)
        moved = (model(ids).logits - out).abs().amax(dim=(0, 2))
    assert (moved > 1e-5).all()


@pytest.mark.parametrize("opts", [dict(window=3), dict(num_longterm=None), dict(num_longterm=0, num_persistent=0),
                                  dict(mac_memory_input="residual"), dict(mac_memory_input="input")],
                         ids=["window3", "all-longterm", "no-longterm", "residual-memory-input", "input-memory-input"])
def test_mac_settings_split_exact(base, ids, opts):
    model = make(base, "mac", **opts)
    with torch.no_grad():
        whole = model(ids).logits
        for a in (3, 8, 17):
            first = model(ids[:, :a], use_cache=True)
            second = model(ids[:, a:], **cache_kwargs(first.past_key_values))
            torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole, atol=1e-5, rtol=0)


def test_mac_memory_input_is_what_the_memory_sees(tiny_path, ids):
    """mac_memory_input="attention": the memory learns from y_t = Attn(...); "residual": from h_t + y_t;
    "input": from x̃_t = input_layernorm(h_t)."""
    seen = {}
    for mode in ("attention", "residual", "input"):
        base = Qwen3ForCausalLM.from_pretrained(tiny_path).eval()
        torch.manual_seed(0)  # the same memory weights for both modes
        model = make(base, "mac", mac_memory_input=mode)
        layer = titans_layers(model)[0]

        def grab_memory_input(module, args, out, mode=mode):
            seen.setdefault(mode, args[0])  # the first segment's call

        def grab_layer_input(module, args, kwargs, mode=mode):
            seen.setdefault(mode + "_h", args[0] if args else kwargs["hidden_states"])

        hook = layer.memory.register_forward_hook(grab_memory_input)
        h = layer.register_forward_pre_hook(grab_layer_input, with_kwargs=True)
        with torch.no_grad():
            model(ids)
        hook.remove()
        h.remove()
    # same weights (same seed), same attention output y; the residual input adds the layer input h
    n = seen["residual"].shape[1]  # the first segment
    torch.testing.assert_close(seen["residual"] - seen["attention"], seen["residual_h"][:, :n])
    torch.testing.assert_close(seen["input"], titans_layers(model)[0].input_layernorm(seen["input_h"][:, :n]))
    with pytest.raises(ValueError, match="mac_memory_input"):
        make(Qwen3ForCausalLM.from_pretrained(tiny_path), "mac", mac_memory_input="both")
