import pytest
import torch
from bench_helpers import tiny_qwen3

from benchmarks.inference import full_forward_answer, greedy_answer, token_nll


@pytest.fixture(scope="module")
def sharp_model(tok):
    # large init: sharp, input-dependent logits, so greedy answers are varied and a wrong cache shows
    return tiny_qwen3(tok, seed=3, initializer_range=0.5)


@pytest.fixture(scope="module")
def context(tok):
    return tok("The pass key is 31415. Remember it. What is the pass key? The pass key is",
               add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("segment_len", [3, 16, 1000], ids=lambda s: f"seg{s}")
def test_streamed_answer_equals_single_forward_when_context_fits(sharp_model, tok, context, segment_len):
    ref = full_forward_answer(sharp_model, tok, context, max_new_tokens=12, stop=(), eos_ids=set())
    got = greedy_answer(sharp_model, tok, context, segment_len=segment_len, max_new_tokens=12, stop=(), eos_ids=set())
    assert len(set(ref.token_ids)) > 2, "degenerate reference: the test would not see a wrong cache"
    assert got.token_ids == ref.token_ids
    assert got.stopped_by == "max_new_tokens" and len(got.token_ids) == 12


def test_stop_string_cuts_the_answer(sharp_model, tok, context):
    ref = full_forward_answer(sharp_model, tok, context, max_new_tokens=12, stop=(), eos_ids=set())
    stop = ref.text[4]
    got = greedy_answer(sharp_model, tok, context, segment_len=8, max_new_tokens=12, stop=(stop,), eos_ids=set())
    assert got.stopped_by == "stop"
    assert got.text == ref.text[: ref.text.index(stop)]


def test_eos_ends_the_answer(sharp_model, tok, context):
    ref = full_forward_answer(sharp_model, tok, context, max_new_tokens=12, stop=(), eos_ids=set())
    eos = ref.token_ids[3]
    got = greedy_answer(sharp_model, tok, context, segment_len=8, max_new_tokens=12, stop=(), eos_ids={eos})
    assert got.stopped_by == "eos"
    assert got.token_ids == ref.token_ids[: ref.token_ids.index(eos)]


def test_token_nll_streamed_equals_one_forward(sharp_model, context):
    ids = torch.tensor([context])
    logits = sharp_model(ids).logits[0, :-1]
    ref = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    got = token_nll(sharp_model, context, segment_len=5)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [(dict(segment_len=0), "segment_len"),
                                           (dict(segment_len=4, max_new_tokens=0), "max_new_tokens")],
                         ids=["segment_len", "max_new_tokens"])
def test_bad_arguments(model, tok, kwargs, match):
    kwargs.setdefault("max_new_tokens", 2)
    with pytest.raises(ValueError, match=match):
        greedy_answer(model, tok, [1, 2, 3], **kwargs)
    with pytest.raises(ValueError, match="empty"):
        greedy_answer(model, tok, [], segment_len=4, max_new_tokens=2)


@pytest.mark.parametrize("variant", ["mag", "mal"])
def test_streamed_answer_of_a_patched_model_equals_single_forward(tok, context, variant):
    from titans import patch
    model = tiny_qwen3(tok, seed=3, initializer_range=0.5)
    model = patch.patch_qwen3(model, variant, window=128, identity_init=False,
                              memory=dict(heads=2, depth=1, chunk_size=16)).eval()
    ref = full_forward_answer(model, tok, context, max_new_tokens=5, stop=(), eos_ids=set())
    got = greedy_answer(model, tok, context, segment_len=24, max_new_tokens=5, stop=(), eos_ids=set())
    assert len(set(ref.token_ids)) > 1
    assert got.token_ids == ref.token_ids


def test_plain_loop_fallback_when_titans_streaming_is_absent(sharp_model, tok, context, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "titans.streaming", None)  # import -> ImportError
    ref = full_forward_answer(sharp_model, tok, context, max_new_tokens=6, stop=(), eos_ids=set())
    got = greedy_answer(sharp_model, tok, context, segment_len=9, max_new_tokens=6, stop=(), eos_ids=set())
    assert got.token_ids == ref.token_ids
