import pytest
from bench_helpers import tiny_qwen3

from titans.tokenizers import byte_tokenizer


@pytest.fixture(scope="session")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def model(tok):
    return tiny_qwen3(tok)
