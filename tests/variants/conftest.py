"""Fixtures of the patch tests: one intra-op thread, a tiny Qwen3 saved and reloaded through from_pretrained."""

import pytest
import torch
from titans_tiny import VOCAB, tiny_config
from transformers import Qwen3ForCausalLM


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
