"""A fully patched model never builds HF's model-level mask (its size grows with the whole stream)."""

import pytest
import torch
import transformers.models.qwen3.modeling_qwen3 as qwen3
from titans_tiny import patched

from titans.compat import cache_kwargs


def _forbid_masks(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("model-level mask built")

    monkeypatch.setattr(qwen3, "create_causal_mask", boom)
    monkeypatch.setattr(qwen3, "create_sliding_window_causal_mask", boom)


@pytest.mark.parametrize("variant", ["mag", "swa"])
def test_fully_patched_model_skips_the_model_level_mask(base, ids, variant, monkeypatch):
    options = dict(window=8) if variant == "swa" else dict(window=8, memory=dict(heads=2, chunk_size=4))
    model = patched(base, variant, **options)
    with torch.no_grad():
        reference = model(ids).logits
        _forbid_masks(monkeypatch)
        out = model(ids[:, :10], use_cache=True)
        streamed = model(ids[:, 10:], **cache_kwargs(out.past_key_values)).logits
    torch.testing.assert_close(torch.cat([out.logits, streamed], 1), reference, atol=1e-5, rtol=1e-5)


def test_partly_patched_model_still_builds_it_for_its_plain_layers(base, ids, monkeypatch):
    model = patched(base, "mag", layers=[1], window=8, memory=dict(heads=2, chunk_size=4))
    _forbid_masks(monkeypatch)
    with torch.no_grad(), pytest.raises(AssertionError, match="model-level mask built"):
        model(ids)
