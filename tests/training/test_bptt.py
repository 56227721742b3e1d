import pytest
import torch

from titans.cache import detach_cache
from titans.training.bptt import segment_bounds, shift_targets
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


ALIGN_MEM = {"variant": "mag", "window": 8,
             "memory": {"heads": 2, "depth": 2, "chunk_size": 8, "max_lr": 0.02}}


@pytest.fixture(scope="module")
def mag():
    return build_model(MODEL, ALIGN_MEM, freeze="none")[0].train()


def _loss(model, ids, targets, **bptt):
    module = TitansLitModule(model, BPTTConfig(segment_len=16, bptt_window=2, **bptt))
    loss, ok = module.run_segments(ids, targets)
    assert ok
    return loss, module


def test_alignment_term_is_off_by_default_and_adds_exactly_lambda_times_the_term(mag):
    from titans.patch import collect_diagnostics

    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 40))  # segments 16 + 16 + 8, chunk 8: every segment writes
    targets = shift_targets(ids)
    base, module = _loss(mag, ids, targets)
    assert module.last_align is None and BPTTConfig().align_reg == 0.0
    same, _ = _loss(mag, ids, targets, align_reg=0.0)
    assert torch.equal(base, same)
    one, module = _loss(mag, ids, targets, align_reg=1.0)
    term = one - base
    assert term.abs() > 1e-4, "the term must be non-trivial for this test to mean anything"
    align_sum, align_weight = module.last_align
    torch.testing.assert_close(term, -align_sum)  # exactly what train/align_loss logs
    torch.testing.assert_close(align_weight, torch.tensor(1.0))  # every segment wrote (40 = 5 chunks of 8)
    scaled, _ = _loss(mag, ids, targets, align_reg=0.3)
    torch.testing.assert_close(scaled - base, 0.3 * term, rtol=1e-4, atol=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in mag.modules())  # read from the output
    # independent check on one segment: the term is −mean over layers of each layer's query_grad_cos diagnostic
    with torch.no_grad():
        cos = [v for k, v in collect_diagnostics(mag(input_ids=ids[:, :16], output_memory_aux=True)).items()
               if k.endswith("query_grad_cos")]
    module = TitansLitModule(mag, BPTTConfig(segment_len=16, align_reg=1.0))
    with_term, _ = module.run_segments(ids[:, :16], targets[:, :16])
    without, _ = TitansLitModule(mag, BPTTConfig(segment_len=16)).run_segments(ids[:, :16], targets[:, :16])
    assert len(cos) == 2
    torch.testing.assert_close(float(with_term - without), -sum(cos) / len(cos), rtol=1e-4, atol=1e-6)


def test_alignment_gradient_reaches_the_query_projection_only(mag):
    """No LM targets: only the alignment term. Its gradient reaches the last memory layer's query rows of
    to_qkv; the error side is detached, so the key/value rows (the write) get none from it."""
    mag.zero_grad(set_to_none=True)
    ids = torch.randint(0, 256, (1, 36))  # the last 4 tokens stay in the buffer (not written)
    module = TitansLitModule(mag, BPTTConfig(segment_len=16, align_reg=1.0))
    loss, ok = module.run_segments(ids, torch.full_like(ids, -100), backward=True)
    assert ok and loss != 0
    memory = mag.model.layers[-1].memory
    inner = memory.config.inner_dim
    grad = memory.to_qkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[:inner].abs().sum() > 0  # query rows
    assert grad[inner:].abs().sum() == 0  # key and value rows


def test_alignment_term_needs_a_memory_and_a_valid_weight(plain):
    with pytest.raises(ValueError, match="bptt.align_reg=0.5 but the model has no neural memory"):
        TitansLitModule(plain, BPTTConfig(align_reg=0.5))
    with pytest.raises(ValueError, match=r"bptt.align_reg=-1.0 is not allowed; allowed: a number >= 0"):
        BPTTConfig(align_reg=-1.0)


def _assert_autocast_keeps_memory_state_fp32(dtype: torch.dtype) -> None:
    """Under CPU autocast to `dtype` the logits are `dtype` and every memory state tensor stays fp32."""
    mem = {"variant": "mag", "window": 8, "memory": {"heads": 2, "depth": 2, "chunk_size": 8, "max_lr": 0.02}}
    model, _ = build_model(MODEL, mem)
    ids = torch.randint(0, 256, (1, 24))
    with torch.autocast("cpu", dtype=dtype):
        out = model(input_ids=ids, use_cache=True)
    assert out.logits.dtype == dtype
    states = out.past_key_values.memory_states
    assert states and all(w.dtype == torch.float32 for s in states.values() for w in s.weights.values())


def test_bf16_autocast_keeps_the_memory_state_fp32(tiny_cfg):
    from titans.training.run import train

    _assert_autocast_keeps_memory_state_fp32(torch.bfloat16)
    metrics = train(tiny_cfg("trainer.precision=bf16-mixed", "memory=mag", "memory.memory.heads=2",
                             "memory.window=32", "trainer.max_steps=1"))
    assert metrics["skipped_steps"] == 0 and all(x == x for x in metrics["train/losses"])


def test_fp16_autocast_keeps_the_memory_state_fp32_and_loss_scaling_skips_overflows(tiny_cfg):
    """fp16 AMP on CPU (Lightning would silently use bf16 there; `build_trainer` asks for fp16 with a CPU
    GradScaler). The memory state stays fp32, losses are finite, and a gradient overflow (forced at batch 1
    by an absurd loss scale) skips that step and lowers the scale instead of failing or stepping on inf."""
    import lightning.pytorch as pl

    from titans.training.run import train

    _assert_autocast_keeps_memory_state_fp32(torch.float16)

    seen = {"logits": set(), "state": set(), "scale": []}

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            pl_module.model.lm_head.register_forward_hook(lambda _m, _i, o: seen["logits"].add(o.dtype))
            for layer in pl_module.model.model.layers:
                layer.memory.register_forward_hook(
                    lambda _m, _i, o: seen["state"].update(w.dtype for w in o[1].weights.values()))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx in (1, 2):  # batch 1: scaled gradients overflow to inf; batch 2: a sane scale again
                trainer.precision_plugin.scaler._scale.fill_(3e38 if batch_idx == 1 else 1024.0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["scale"].append(trainer.precision_plugin.scaler.get_scale())

    metrics = train(tiny_cfg("trainer.precision=16-mixed", "memory=mag", "memory.memory.heads=2",
                             "memory.window=32", "trainer.max_steps=3"), extra_callbacks=[Spy()])
    assert seen["logits"] == {torch.float16} and seen["state"] == {torch.float32}
    assert all(x == x and abs(x) < float("inf") for x in metrics["train/losses"])
    assert metrics["skipped_steps"] == 1 and seen["scale"] == pytest.approx([65536.0, 1.5e38, 1024.0])  # halved
    # as in Lightning's automatic AMP, a step the scaler skipped still counts in global_step
    assert metrics["global_step"] == 3 and len(metrics["train/losses"]) == 3


def test_val_answer_acc_known_answer():
    """val/answer_acc on hand-made logits: a sample counts only when every answer token is the argmax.
    Answers at positions 5-7 of 8 tokens; sample 0 right, 1 one token wrong, 2 all wrong, 3 has no answer:
    1/3 (inverted scoring gives 2/3, "any token right" gives 2/3, counting sample 3 gives 1/4 or 2/4)."""
    from types import SimpleNamespace

    from titans.compat import CACHE_KWARG
    from titans.training.module import BPTTConfig, TitansLitModule

    V, T = 11, 8
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]] * 4)
    answer = torch.zeros(4, T, dtype=torch.bool)
    answer[:3, 5:] = True
    pred = torch.roll(ids, -1, dims=1)  # position t predicts token t+1: all right
    pred[1, 5] = 0  # sample 1: the second answer token (position 6) wrong
    pred[2, 4:7] = 0  # sample 2: every answer token wrong

    class Known(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep=1, use_cache=True, **kwargs):
            logits = torch.nn.functional.one_hot(pred[:, :input_ids.shape[1]], V).float() * 10.0
            keep = logits_to_keep
            logits = logits[:, keep] if torch.is_tensor(keep) else logits[:, -keep:]
            return SimpleNamespace(logits=logits, **{CACHE_KWARG: None})

    module = TitansLitModule(Known(), BPTTConfig(segment_len=T))
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module.validation_step({"input_ids": ids, "answer_mask": answer, "labels": ids.clone()}, 0)
    assert logged["val/answer_acc"] == pytest.approx(1 / 3)
