"""benchmarks.peers.titans_pytorch: titans-pytorch's NeuralMemory inside a patched model, through our cache."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from benchmarks.peers import titans_pytorch as peer
from titans.cache import TitansCache, detach_cache
from titans.compat import cache_kwargs, output_cache
from titans.memory import MemoryConfig
from titans.patch import patch_qwen3

VOCAB = 300
# the CPU proof's memory at toy size: linear, no momentum, conv + induction init (which the peer cannot match)
MEMORY = dict(heads=2, depth=1, chunk_size=4, momentum=False, max_lr=0.5, conv_kernel=4, qk_init="induction")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def peer_model(variant: str = "mag", **kw):
    torch.manual_seed(0)
    base = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=1024))
    opts = dict(window=6, memory=dict(MEMORY), identity_init=False, memory_layers=[0], freeze="none")
    opts.update(kw)
    return peer.use_titans_pytorch_memory(patch_qwen3(base, variant, **opts))


def run_pieces(model, ids, splits):
    cache, logits, start = None, [], 0
    for end in [*splits, ids.shape[1]]:
        out = model(ids[:, start:end], **cache_kwargs(cache), use_cache=True)
        cache, start = output_cache(out), end
        logits.append(out.logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("splits", [[8, 16], [5, 11, 13], [1, 2, 3, 6, 7, 9, 10, 14, 15, 17, 18]],
                         ids=["chunk-aligned", "inside-chunks", "mostly-single-tokens"])
@pytest.mark.parametrize("variant", ["mag", "mal"])
def test_streaming_whole_equals_pieces(variant, splits):
    """One call equals any split into calls (the peer alone is exact only for splits at chunk boundaries)."""
    model = peer_model(variant).eval()
    assert isinstance(model.model.layers[0].memory, peer.PeerMemory)
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model(ids).logits
        pieces, cache = run_pieces(model, ids, splits)
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=0)
    state = cache.layers[0].memory
    assert isinstance(state, peer.PeerMemoryState) and state.offset == 19 and state.buffer.shape[1] == 19 % 4


def test_the_memory_is_causal_and_remembers():
    """Changing token t leaves every output before t as it was, and changes outputs far past the window."""
    model = peer_model().eval()
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(4))
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-4  # 15+ tokens later, beyond the 6-token window: the memory


def test_cache_select_and_detach_keep_each_sample_its_memory():
    """batch_select_indices (generate) gives the selected rows' memory; detach_cache (bptt) cuts the graph."""
    model = peer_model()
    ids = torch.randint(0, VOCAB, (3, 14), generator=torch.Generator().manual_seed(5))
    _, cache = run_pieces(model, ids[:, :10], [6])
    assert cache.layers[0].memory.weights["weights.0"].requires_grad
    detach_cache(cache)
    state = cache.layers[0].memory
    assert not any(t.requires_grad for t in [*state.weights.values(), *state.last_update.values(), state.buffer])
    with torch.no_grad():
        full = model(ids[:, 10:], **cache_kwargs(cache), use_cache=True).logits
        _, cache = run_pieces(model, ids[:, :10], [6])
        cache.batch_select_indices(torch.tensor([2, 0]))
        assert cache.layers[0].memory.batch_size == 2
        picked = model(ids[[2, 0], 10:], **cache_kwargs(cache), use_cache=True).logits
    torch.testing.assert_close(picked, full[[2, 0]], atol=1e-5, rtol=0)


def test_gradients_reach_the_peer_through_segments_and_training_runs_finite():
    """Backprop through two segments reaches every peer parameter that computes something (the peer's
    `memory_model` is an unused template of the per-head initial weights); a few AdamW steps stay finite
    and lower the loss on a fixed batch."""
    from titans.training.module import BPTTConfig, TitansLitModule

    model = peer_model()
    module = TitansLitModule(model, BPTTConfig(segment_len=8, bptt_window=2))
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(6))
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    module.run_segments(ids, targets, backward=True)
    memory = model.model.layers[0].memory
    no_grad = [n for n, p in memory.named_parameters()
               if (p.grad is None or p.grad.abs().sum() == 0) and not n.startswith("peer.memory_model.")]
    assert no_grad == []
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss, finite = module.run_segments(ids, targets, backward=True)
        assert finite
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_matched_config_and_what_it_cannot_match():
    """The peer gets our knobs (chunked weights refresh every chunk, θ scale, gate inits, norms, linear memory)
    and reports the rest."""
    cfg = MemoryConfig(dim=32, **MEMORY)
    kwargs, mismatches = peer.peer_kwargs(cfg)
    assert kwargs["batch_size"] == kwargs["chunk_size"] == 4
    assert kwargs["default_step_transform_max_lr"] == 0.5 and kwargs["momentum"] is False
    assert kwargs["mem_model_norm_add_residual"] is False and len(list(kwargs["model"].parameters())) == 1
    assert any(m.startswith("conv_kernel=4") for m in mismatches)
    assert any(m.startswith("qk_init='induction'") for m in mismatches)
    assert not any(m.startswith("gate_keys") for m in mismatches)
    gated = MemoryConfig(dim=32, **MEMORY, gate_keys=True)
    assert any(m.startswith("gate_keys=True") for m in peer.peer_kwargs(gated)[1])
    with pytest.raises(ValueError, match="head_dim"):
        peer.peer_kwargs(MemoryConfig(dim=32, heads=1, head_dim=16))


def test_adapter_refuses_what_it_cannot_serve():
    model = peer_model().eval()
    with pytest.raises(ValueError, match="no memory aux"):
        model(torch.zeros(1, 4, dtype=torch.long), output_memory_aux=True)
    out = model(torch.zeros(1, 4, dtype=torch.long), use_cache=True)
    with pytest.raises(TypeError, match="cannot be saved"):
        out.past_key_values.layers[0].memory.to_tensors()
    with pytest.raises(ValueError, match="no memory to swap"):
        peer.use_titans_pytorch_memory(patch_qwen3(Qwen3ForCausalLM(Qwen3Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16)), "swa", window=4))
    with pytest.raises(ValueError, match="MAC"):
        peer_model("mac", window=None, segment_len=8, memory_layers="all")
    assert isinstance(TitansCache.upgrade(out.past_key_values), TitansCache)


def test_build_model_applies_memory_impl():
    """`memory.memory_impl` (a dotted path) is applied after patching, so training and evaluation build the peer."""
    from titans.training.builders import build_model

    model_cfg = {"name": "t", "tokenizer": "byte", "seed": 0, "arch": {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "intermediate_size": 64}}
    memory_cfg = {"variant": "mag", "window": 8, "memory": dict(MEMORY),
                  "memory_impl": "benchmarks.peers.titans_pytorch.use_titans_pytorch_memory"}
    model, _ = build_model(model_cfg, memory_cfg, freeze="none")
    assert isinstance(model.model.layers[0].memory, peer.PeerMemory)


def test_weights_round_trip_through_a_checkpoint(tmp_path):
    """A peer model's weights load into a freshly built one (what the curriculum's stages and the evaluation do):
    every parameter is its own storage, so load_state_dict can write each head's initial weights."""
    from titans.training.builders import build_model
    from titans.training.checkpoint import load_model_weights

    model_cfg = {"name": "t", "tokenizer": "byte", "seed": 0, "arch": {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "intermediate_size": 64}}
    memory_cfg = {"variant": "mag", "window": 8, "identity_init": False, "memory": dict(MEMORY),
                  "memory_impl": "benchmarks.peers.titans_pytorch.use_titans_pytorch_memory"}
    torch.manual_seed(1)
    trained, _ = build_model(model_cfg, memory_cfg, freeze="none")
    with torch.no_grad():
        trained.model.layers[0].memory.peer.memory_model_parameters[0][1].add_(0.5)  # head 1 differs from head 0
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "w.ckpt")
    torch.manual_seed(2)
    fresh, _ = build_model(model_cfg, memory_cfg, freeze="none")
    load_model_weights(fresh, tmp_path / "w.ckpt", "checkpoint")
    ids = torch.randint(0, 200, (1, 20), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids).logits, trained.eval()(ids).logits, atol=1e-6, rtol=0)
