"""titans.manager.index: exact search and the approximate usearch (HNSW) index behind one interface."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from data_gen.facts import make_corpus
from titans.embedders import HashingEmbedder
from titans.manager import ARCHITECTURES, LongTermMemory, LongTermMemoryConfig, TitansManager
from titans.manager.index import IndexConfig, UsearchIndex

DIM = 64


@pytest.fixture(scope="module")
def facts():
    corpus = make_corpus(400, seed=11)
    emb = HashingEmbedder(dim=DIM)
    return corpus, emb.encode(corpus.docs), emb.encode(corpus.paraphrases)


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def test_approximate_search_finds_what_exact_search_finds(facts):
    _, docs, questions = facts
    cfg = LongTermMemoryConfig(surprise_threshold=0.0)
    exact = LongTermMemory(DIM, 500, cfg)
    approx = LongTermMemory(DIM, 500, LongTermMemoryConfig(surprise_threshold=0.0, index="usearch"))
    for lt in (exact, approx):
        lt.write(docs, list(range(400)))
    assert len(approx.key_index) == len(approx.value_index) == 400
    for search in ("search_keys", "search"):
        q = questions if search == "search_keys" else exact.read(questions)
        (es, ei), (as_, ai) = getattr(exact, search)(q, 10), getattr(approx, search)(q, 10)
        assert ai.shape == ei.shape == (400, 10) and recall_at(ai, ei) > 0.97
        np.testing.assert_allclose(as_[:, 0], es[:, 0], atol=1e-5)  # the best match, with the same score


def test_index_follows_writes_and_evictions(facts):
    _, docs, _ = facts
    lt = LongTermMemory(DIM, 20, LongTermMemoryConfig(surprise_threshold=0.0, forget_rate=0.5, index="usearch"))
    for start in range(0, 200, 25):
        lt.write(docs[start : start + 25], list(range(start, start + 25)))
    held = set(lt.stored_ids())
    assert lt.evicted > 0 and len(lt.key_index) == len(held) == 20
    lt.remove(sorted(held)[0])
    held = set(lt.stored_ids())
    for search, q in (("search_keys", docs[:200]), ("search", lt.read(docs[:200]))):
        _, ids = getattr(lt, search)(q, 25)
        assert ids.shape[1] == 19 and set(ids[ids >= 0].ravel()) <= held  # nothing evicted or removed comes back
    own = lt.search_keys(docs[sorted(held)], 1)[1][:, 0]
    assert list(own) == sorted(held)  # each held document is its own nearest


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_manager_with_the_approximate_index_ranks_like_exact(arch, facts):
    corpus, _, _ = facts
    kw = dict(architecture=arch, vector_dim=DIM, short_term_size=16, long_term_size=250)
    exact = TitansManager(HashingEmbedder(dim=DIM), **kw)
    approx = TitansManager(HashingEmbedder(dim=DIM), long_term_config=LongTermMemoryConfig(index="usearch"), **kw)
    for m in (exact, approx):
        m.add_documents(corpus.docs[:200])
    e, a = exact.query_many(corpus.paraphrases[:100], 5), approx.query_many(corpus.paraphrases[:100], 5)
    assert recall_at([[r["id"] for r in x] for x in a], [[r["id"] for r in x] for x in e]) > 0.95


def test_manager_saves_and_loads_the_index_graph(tmp_path, facts):
    from safetensors import safe_open
    from safetensors.torch import save_file

    corpus, _, _ = facts
    cfg = LongTermMemoryConfig(index=IndexConfig(kind="usearch", dtype="f16", connectivity=8))
    m = TitansManager(HashingEmbedder(dim=DIM), vector_dim=DIM, short_term_size=8, long_term_size=300,
                      long_term_config=cfg)  # fmt: skip
    m.add_documents(corpus.docs[:250])
    path = tmp_path / "m.safetensors"
    m.save(path)
    restored = TitansManager.from_file(path, HashingEmbedder(dim=DIM))
    assert restored.long_term_config.index == cfg.index and restored.long_term.key_index.approximate
    assert restored.query_many(corpus.paraphrases[:50], 5) == m.query_many(corpus.paraphrases[:50], 5)
    for x in (m, restored):  # the restored graph keeps following writes (HNSW inserts may then differ a little)
        x.add_documents(corpus.docs[250:300])
    new = [i for i in range(250, 300) if i in restored.long_term]
    top = restored.long_term.search_keys(restored._embed([corpus.docs[i] for i in new]), 1)[1][:, 0]
    assert len(new) > 40 and list(top) == new and len(restored.long_term.key_index) == len(restored.long_term)
    a, e = restored.query_many(corpus.paraphrases[:60], 5), m.query_many(corpus.paraphrases[:60], 5)
    assert recall_at([[r["id"] for r in x] for x in a], [[r["id"] for r in x] for x in e]) > 0.95

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert tensors["long_term.store.key_index"].dtype == torch.uint8  # the graph, as bytes (no pickle)
    # a graph whose vectors are not the store's is refused
    swapped = dict(tensors, **{"long_term.store.key_index": tensors["long_term.store.value_index"].clone()})
    save_file(swapped, str(tmp_path / "swapped.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="index's vectors differ"):
        TitansManager.from_file(tmp_path / "swapped.safetensors", HashingEmbedder(dim=DIM))
    # a save without the graphs (e.g. written by exact search, index switched on later): built from the vectors
    bare = {k: v for k, v in tensors.items() if not k.endswith("_index")}
    save_file(bare, str(tmp_path / "bare.safetensors"), metadata=meta)
    rebuilt = TitansManager.from_file(tmp_path / "bare.safetensors", HashingEmbedder(dim=DIM))
    assert len(rebuilt.long_term.key_index) == len(rebuilt.long_term.value_index) == len(rebuilt.long_term) > 200
    as_saved = TitansManager.from_file(path, HashingEmbedder(dim=DIM))
    assert [r[0]["id"] for r in rebuilt.query_many(corpus.docs[:20], 1)] == list(range(20))
    assert rebuilt.query_many(corpus.docs[:20], 1) == as_saved.query_many(corpus.docs[:20], 1)


def test_index_config_validates_and_names_the_missing_package(monkeypatch):
    bad_values = (("kind", "faiss"), ("dtype", "f64"), ("connectivity", 1), ("expansion_search", 0), ("threads", -1))
    for key, bad in bad_values:
        with pytest.raises(ValueError, match=key):
            IndexConfig(**{key: bad})
    with pytest.raises(ValueError, match="index"):
        LongTermMemoryConfig(index=3)
    assert LongTermMemoryConfig(index={"kind": "usearch", "dtype": "i8"}).index == IndexConfig("usearch", "i8")
    assert LongTermMemoryConfig.from_dict(LongTermMemoryConfig(index="usearch").to_dict()).index.kind == "usearch"
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(ImportError, match="pip install usearch"):
        UsearchIndex(IndexConfig("usearch"), np.zeros((4, DIM), np.float32), np.full(4, -1))
