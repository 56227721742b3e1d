import pytest
import torch

from titans.training.bptt import detach_cache, segment_bounds, shift_targets
from titans.training.builders import build_model
from titans.training.module import BPTTConfig, TitansLitModule

ARCH = {"vocab_size": None, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128, "max_position_embeddings": 1 << 20,
        "tie_word_embeddings": True}
MODEL = {"name": "qwen3_tiny", "pretrained": None, "tokenizer": "byte", "dtype": "float32", "seed": 0, "arch": ARCH}


@pytest.fixture(scope="module")
def plain():
    return build_model(MODEL, None)[0]


def test_segment_bounds_ragged_and_strict():
    assert segment_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert segment_bounds(8, 4, strict=True) == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match=r"bptt.segment_len=4.*data.seq_len.*12"):
        segment_bounds(10, 4, strict=True)
    with pytest.raises(ValueError, match="bptt.segment_len=0"):
        segment_bounds(10, 0)


def test_segmented_loss_equals_whole_sequence_loss(plain):
    """KV cache carried across segments: the sum of segment losses is the whole sequence's mean loss."""
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (2, 70))
    labels = ids.clone()
    labels[:, :5] = -100
    targets = shift_targets(labels)
    whole = TitansLitModule(plain, BPTTConfig(segment_len=70))
    pieces = TitansLitModule(plain, BPTTConfig(segment_len=16, bptt_window=2))
    with torch.no_grad():
        full, ok1 = whole.run_segments(ids, targets)
        seg, ok2 = pieces.run_segments(ids, targets)
        ref = plain(input_ids=ids, labels=labels).loss
    assert ok1 and ok2
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seg, ref, rtol=1e-5, atol=1e-5)


def _embedding_grads(model, ids, targets, window, segment_len):
    """Per-segment norm of d loss / d input embeddings after `run_segments(backward=True)`."""
    outs = []

    def hook(_module, _inp, out):
        out.retain_grad()
        outs.append(out)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        model.zero_grad(set_to_none=True)
        module = TitansLitModule(model, BPTTConfig(segment_len=segment_len, bptt_window=window))
        _, ok = module.run_segments(ids, targets, backward=True)
        assert ok
    finally:
        handle.remove()
    return [0.0 if o.grad is None else float(o.grad.abs().sum()) for o in outs]


def test_gradient_reaches_memory_writes_within_the_window_only():
    """MAG with a window far shorter than a segment: the loss on the last tokens of segment 4 can only
    reach earlier segments through the memory (attention's receptive field, 2 layers x 8 tokens, stays
    inside segment 4). Within the bptt window the gradient reaches segment 3's writes; beyond it, none."""
    pytest.importorskip("titans.patch")
    mem = {"variant": "mag", "window": 8, "identity_init": False,
           "memory": {"heads": 2, "depth": 2, "chunk_size": 8, "max_lr": 0.02}}
    model, _ = build_model(MODEL, mem, freeze="none")
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (1, 128))
    targets = torch.full_like(ids, -100)
    targets[:, -4:] = ids[:, -4:]  # loss on the last 4 tokens only
    g2 = _embedding_grads(model, ids, targets, window=2, segment_len=32)  # windows [s1 s2] [s3 s4]
    assert len(g2) == 4
    assert g2[3] > 0 and g2[2] > 0, g2  # segment 3 reaches segment 4's loss through memory writes
    assert g2[0] == 0 and g2[1] == 0, g2  # detached at the window boundary
    g4 = _embedding_grads(model, ids, targets, window=4, segment_len=32)
    assert all(g > 0 for g in g4), g4
    # the write path's own parameters get gradient from segment 3's writes
    writes = [p for n, p in model.named_parameters() if "to_qkv" in n]
    assert writes and all(p.grad is not None and p.grad.abs().sum() > 0 for p in writes)


def test_detach_cache_cuts_the_graph(plain):
    ids = torch.randint(0, 256, (1, 8))
    cache = plain(input_ids=ids, use_cache=True).past_key_values
    assert cache.layers[0].keys.requires_grad
    assert detach_cache(cache) is cache and not cache.layers[0].keys.requires_grad
    assert detach_cache(None) is None


def test_gate_regulariser_pulls_gates_toward_the_target():
    pytest.importorskip("titans.patch")
    mem = {"variant": "mag", "window": 8, "memory": {"heads": 2, "depth": 1, "chunk_size": 8, "max_lr": 0.02}}
    model, _ = build_model(MODEL, mem)
    ids = torch.randint(0, 256, (1, 32))
    targets = torch.full_like(ids, -100)  # no LM targets: only the regulariser
    module = TitansLitModule(model, BPTTConfig(segment_len=16, gate_reg=1.0, gate_target=1.0))
    loss, ok = module.run_segments(ids, targets, backward=True)
    assert ok and loss > 0  # gates start near sigmoid(-3) ≈ 0.05, far from 1
    biases = [p for n, p in model.named_parameters() if "memory_gate.proj.bias" in n]
    assert biases and all(p.grad is not None and (p.grad < 0).all() for p in biases)  # gradient opens the gates
    with pytest.raises(ValueError, match="bptt.gate_reg=1.0 but the model has no memory gates"):
        TitansLitModule(build_model(MODEL, None)[0], BPTTConfig(gate_reg=1.0))


def test_bf16_autocast_keeps_the_memory_state_fp32(tiny_cfg):
    pytest.importorskip("titans.patch")
    from titans.training.run import train

    mem = {"variant": "mag", "window": 8, "memory": {"heads": 2, "depth": 2, "chunk_size": 8, "max_lr": 0.02}}
    model, _ = build_model(MODEL, mem)
    ids = torch.randint(0, 256, (1, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16
    states = out.past_key_values.memory_states
    assert states and all(w.dtype == torch.float32 for s in states.values() for w in s.weights.values())
    metrics = train(tiny_cfg("trainer.precision=bf16-mixed", "memory=mag", "memory.memory.heads=2",
                             "memory.window=32", "trainer.max_steps=1"))
    assert metrics["skipped_steps"] == 0 and all(x == x for x in metrics["train/losses"])
