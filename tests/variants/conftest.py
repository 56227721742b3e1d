"""A tiny Qwen3 (random init, built locally, saved and reloaded through from_pretrained) for the patch tests."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from titans.patch import patch_qwen3

VOCAB = 300
# small chunks so split points fall inside and across chunks; max_lr 0.1 keeps the random memory finite
MEMORY = dict(heads=2, depth=2, chunk_size=4, max_lr=0.1)


def tiny_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=False,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, oversubscribed CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("tiny_qwen3")
    Qwen3ForCausalLM(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture
def base(tiny_path):
    return Qwen3ForCausalLM.from_pretrained(tiny_path).eval()


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 23), generator=torch.Generator().manual_seed(7))


def patched(base, variant="mag", **kw):
    """A patched model where the memory matters (identity_init=False) and the window/segment is short."""
    opts = dict(window=8, memory=dict(MEMORY), identity_init=False, num_persistent=2)
    if variant == "swa":
        del opts["memory"]
    if variant == "mac":
        opts.update(window=None, segment_len=8, num_longterm=4)
    opts.update(kw)
    return patch_qwen3(base, variant, **opts).eval()
