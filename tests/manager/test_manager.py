"""titans.manager: the document memory on the real neural memory (recall floor, sources, surprise, bad input)."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data_gen.facts import make_corpus
from titans.embedders import BaseEmbedder, HashingEmbedder
from titans.manager import ARCHITECTURES, LongTermMemory, LongTermMemoryConfig, TitansManager

DIM = 128


def manager(arch: str = "mac", **kw) -> TitansManager:
    kw.setdefault("short_term_size", 16)
    kw.setdefault("long_term_size", 200)
    return TitansManager(HashingEmbedder(dim=DIM), architecture=arch, vector_dim=DIM, **kw)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(120, seed=3)


def hit_rate(results: list[list[dict]], wanted: list[int]) -> float:
    return float(np.mean([any(r["id"] == w for r in rs) for rs, w in zip(results, wanted)]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_floor_documents_long_evicted_from_short_term_are_found(arch, corpus):
    """The issue's floor: long_term_size > documents; a stored document's own text finds it in the
    top 5 for >= 80% of the documents long evicted from short-term memory."""
    m = manager(arch)
    m.add_documents(corpus.docs)
    evicted = list(range(80))  # short-term holds the last 16 of 120
    assert not any(i in m.short_term for i in evicted)
    results = m.query_many([corpus.docs[i] for i in evicted], top_k=5)
    assert hit_rate(results, evicted) >= 0.8
    assert all(rs[0]["source"] == "long_term" for rs in results if rs[0]["id"] in evicted)


def test_long_term_only_recall_goes_through_the_memory_read(corpus):
    m = manager("mac")
    m.add_documents(corpus.docs)
    q = m._embed(corpus.docs[:80])
    ranked = m.rank(q, 5, "long_term")
    assert np.mean([any(i == j for i, _, _ in r) for j, r in enumerate(ranked)]) >= 0.8
    # an empty (reset) memory reads zeros: the same store decoded with its read finds nothing
    m.long_term.state = m.long_term.memory.init_state(1)
    assert np.allclose(m.long_term.read(q), 0.0)


def test_writes_teach_the_memory_at_test_time():
    lt = LongTermMemory(DIM, 50, LongTermMemoryConfig(momentum_factor=0.0))
    e = HashingEmbedder(dim=DIM).encode(["Kalo invented the Renmi engine.", "The river Tas crosses Vor."])
    assert np.allclose(lt.read(e), 0.0)  # a linear memory starts empty
    kept, evicted, surprise = lt.write(e, [0, 1])
    assert kept == [True, True] and evicted == [] and np.all(surprise > 0)
    reads = lt.read(e)
    cos = reads @ lt.values[:2].T
    assert cos[0, 0] > 0.95 and cos[1, 1] > 0.95  # each reads back its own value


def test_surprise_decides_what_is_kept():
    docs = make_corpus(30, seed=1).docs
    m = manager(long_term_config=LongTermMemoryConfig(momentum_factor=0.0))  # exact delta-rule writes
    m.add_documents(docs, memory_type="long_term")
    before = m.stats()["long_term"]
    m.add_documents([docs[-1]], memory_type="long_term")  # just learned: no surprise -> not kept
    after = m.stats()["long_term"]
    assert after["writes"] == before["writes"] + 1
    assert after["rejected"] == before["rejected"] + 1 and after["size"] == before["size"]
    picky = manager(long_term_config=LongTermMemoryConfig(surprise_threshold=1.0))
    picky.add_documents(docs, memory_type="long_term")
    everything = manager(long_term_config=LongTermMemoryConfig(surprise_threshold=0.0))
    everything.add_documents(docs, memory_type="long_term")
    assert len(everything.long_term) == 30 > len(picky.long_term) > 0


def test_long_term_store_is_bounded_and_forgets_unheld_documents(corpus):
    m = manager(long_term_size=10, short_term_size=4)
    m.add_documents(corpus.docs[:40])
    s = m.stats()
    assert s["long_term"]["size"] == 10 and s["long_term"]["evicted"] + s["long_term"]["rejected"] >= 30
    assert s["documents"] <= 14  # texts of documents no memory holds are dropped


def test_sources_short_term_long_term_persistent(corpus):
    m = manager("mag")
    m.add_documents(["Always answer in the style of a ship's log."], memory_type="persistent")
    m.add_documents(corpus.docs[:60], metadatas=[{"i": i} for i in range(60)])
    recent = m.query(corpus.docs[59], top_k=1)[0]
    old = m.query(corpus.docs[3], top_k=1)[0]
    task = m.query("answer in the style of a ship's log", top_k=1)[0]
    assert (recent["source"], recent["metadata"], recent["content"]) == ("short_term", {"i": 59}, corpus.docs[59])
    assert (old["source"], old["metadata"]) == ("long_term", {"i": 3})
    assert task["source"] == "persistent"
    assert set(recent) == {"content", "score", "source", "metadata", "id"}


def test_short_term_documents_reach_long_term_by_consolidation_or_eviction(corpus):
    m = manager(short_term_size=8)
    m.add_documents(corpus.docs[:5], memory_type="short_term")
    assert len(m.long_term) == 0 and m.stats()["short_term"]["pending"] == 5
    assert m.consolidate_memories() == len(m.long_term) > 0
    assert m.stats()["short_term"]["pending"] == 0 and m.consolidate_memories() == 0
    m.add_documents(corpus.docs[5:20], memory_type="short_term")  # 7 of these leave short-term unconsolidated
    assert m.long_term.writes == 5 + 7
    assert m.query(corpus.docs[6], top_k=1)[0]["id"] == 6  # evicted, still found


def test_long_term_only_documents_skip_short_term(corpus):
    m = manager()
    m.add_documents(corpus.docs[:5], memory_type="long_term")
    assert len(m.short_term) == 0 and len(m.long_term) == 5
    assert m.query(corpus.docs[2], top_k=1)[0]["source"] == "long_term"


def test_clear(corpus):
    m = manager()
    m.add_documents(corpus.docs[:20])
    m.add_documents(["task"], memory_type="persistent")
    m.clear(["short_term"])
    assert len(m.short_term) == 0 and len(m.long_term) == 20
    m.clear()
    assert m.stats()["documents"] == 0 and m.long_term.writes == 0 and m.query("anything", top_k=3) == []


def test_save_load_round_trips_everything(tmp_path, corpus):
    m = manager("mal", long_term_config=LongTermMemoryConfig(momentum_factor=0.5, chunk_size=4))
    m.add_documents(corpus.docs[:30], metadatas=[{"n": i} for i in range(30)])
    m.add_documents(corpus.docs[30:35], memory_type="short_term")
    m.add_documents(["task rule"], memory_type="persistent")
    path = tmp_path / "mem.safetensors"
    m.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    restored = TitansManager.from_file(path, HashingEmbedder(dim=DIM))
    assert restored.settings() == m.settings() and restored.stats() == m.stats()
    queries = corpus.docs[:6] + corpus.paraphrases[:6]
    assert restored.query_many(queries, 5) == m.query_many(queries, 5)
    # the neural memory's state (weights, momentum, surprise window) continues identically
    for x in (m, restored):
        x.add_documents(corpus.docs[35:50])
        x.consolidate_memories()
    assert restored.stats() == m.stats()
    assert restored.query_many(queries, 5) == m.query_many(queries, 5)


def test_load_rejects_corrupt_and_foreign_files(tmp_path, corpus):
    m = manager()
    m.add_documents(corpus.docs[:5])
    good = tmp_path / "good.safetensors"
    m.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    for name in ("trunc", "junk"):
        with pytest.raises(ValueError, match="not a valid TitansManager save"):
            manager().load(tmp_path / f"{name}.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="titans_manager"):
        manager().load(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError):
        manager().load(tmp_path / "missing.safetensors")


def test_bad_input_gives_clear_errors():
    m = manager()
    with pytest.raises(ValueError, match="texts is empty"):
        m.add_documents([])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        m.add_documents(["fine", ""])
    with pytest.raises(ValueError, match="top_k"):
        m.query("x", top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        m.query("x", top_k=-3)
    with pytest.raises(ValueError, match="text"):
        m.query("   ")
    with pytest.raises(ValueError, match="memory_type"):
        m.add_documents(["a"], memory_type="episodic")
    with pytest.raises(ValueError, match="metadatas"):
        m.add_documents(["a", "b"], metadatas=[{}])
    with pytest.raises(TypeError, match="JSON"):
        m.add_documents(["a"], metadatas=[{"f": object()}])
    with pytest.raises(ValueError, match="architecture"):
        manager("memory_only")
    with pytest.raises(ValueError, match="vector_dim=384"):
        TitansManager(HashingEmbedder(dim=DIM), vector_dim=384)
    with pytest.raises(ValueError, match="persistent_size"):
        manager(persistent_size=1).add_documents(["a", "b"], memory_type="persistent")

    with pytest.raises(ValueError, match="mode"):
        m.rank(np.zeros((1, DIM), np.float32), 5, "hybrid")
    with pytest.raises(ValueError, match=r"\[M, 128\]"):
        m.rank(np.zeros((1, 3), np.float32), 5, "mac")

    class Unknown(BaseEmbedder):  # no declared dim: caught on the first embedding
        def embed(self, texts):
            return np.ones((len(texts), 7))

    with pytest.raises(ValueError, match="7-dim vectors"):
        TitansManager(Unknown(), vector_dim=DIM).add_documents(["a"])


def test_long_term_config_validates_and_maps_onto_neural_memory_gates():
    gates = LongTermMemoryConfig(forget_rate=0.05, momentum_factor=0.8, learning_rate=0.5).fixed_gates(100)
    assert gates["fixed_lr"] == pytest.approx(0.1) and gates["fixed_momentum_decay"] == 0.8
    assert (1 - gates["fixed_forget"]) ** 100 == pytest.approx(0.95)  # 5% lost over long_term_size writes
    off = LongTermMemoryConfig(forget_rate=0.0, momentum_factor=0.0).fixed_gates(100)
    assert off["momentum"] is False and off["forgetting"] is False
    for key, bad in (("memory_depth", 5), ("forget_rate", 1.0), ("momentum_factor", -0.1), ("surprise_threshold", -1)):
        with pytest.raises(ValueError, match=key):
            LongTermMemoryConfig(**{key: bad})


@pytest.mark.parametrize("forget_rate", [0.0, 0.5])
def test_full_store_keeps_the_documents_with_the_highest_retention(forget_rate):
    """Reference check of the heap-based eviction: retention = relative surprise · (1 − α)^age, so every
    document that passed the threshold but is not kept ranks below every kept one."""
    cfg = LongTermMemoryConfig(surprise_threshold=0.0, surprise_window=1000, forget_rate=forget_rate)
    lt = LongTermMemory(DIM, 12, cfg)
    emb = HashingEmbedder(dim=DIM).encode(make_corpus(60, seed=2).docs)
    kept_flags, evicted, s = [], [], []
    for start in range(0, 60, 7):  # several calls, as a user would add
        k, e, sur = lt.write(emb[start : start + 7], list(range(start, min(start + 7, 60))))
        kept_flags += k
        evicted += e
        s += list(sur)
    s = np.array(s)
    log_keep = np.log1p(-lt._forget) if forget_rate else 0.0
    key = np.array([np.log(s[i] / np.median(s[:i])) if i else 0.0 for i in range(60)]) - np.arange(60) * log_keep
    kept = set(lt.stored_ids())
    assert len(kept) == 12 and len(evicted) + (60 - sum(kept_flags)) == 48
    assert min(key[i] for i in kept) >= max(key[i] for i in range(60) if i not in kept)


def test_reads_in_batches_equal_one_read_and_never_write(monkeypatch):
    import titans.manager.long_term as long_term

    lt = LongTermMemory(DIM, 50)
    emb = HashingEmbedder(dim=DIM).encode(make_corpus(9, seed=4).docs)
    lt.write(emb[:6], list(range(6)))
    before = {k: v.clone() for k, v in lt.state.weights.items()}
    whole = lt.read(emb)
    monkeypatch.setattr(long_term, "_READ_BATCH", 2)
    np.testing.assert_allclose(lt.read(emb), whole, atol=1e-6)
    assert all(torch.equal(before[k], lt.state.weights[k]) for k in before)
    # queries do not see each other: a query's read does not depend on the others in the call
    np.testing.assert_allclose(lt.read(emb[:1]), whole[:1], atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adds_saves_and_queries_from_threads_at_once(arch, tmp_path):
    """Adds while other threads query and save: without the manager's lock a query ranked a document that
    an add then dropped (KeyError), or read half-updated stores."""
    docs = make_corpus(300, seed=5).docs
    m = TitansManager(HashingEmbedder(dim=64), architecture=arch, vector_dim=64, short_term_size=4, long_term_size=8)
    errors: list[str] = []
    stop = time.perf_counter() + 0.5

    def loop(step):
        i = 0
        while time.perf_counter() < stop:
            try:
                step(i)
            except Exception as err:  # noqa: BLE001 - collected and reported by the assert below
                errors.append(f"{type(err).__name__}: {err}")
                return
            i += 1

    def add(i):
        m.add_documents(docs[3 * i % 297 : 3 * i % 297 + 3], memory_type="short_term" if i % 2 else None)

    def query(i):
        for rs in m.query_many(docs[5 * i % 295 : 5 * i % 295 + 5], top_k=5):
            assert all(r["content"] in docs for r in rs)

    def save(i):
        m.save(tmp_path / "m.safetensors")
        restored = TitansManager.from_file(tmp_path / "m.safetensors", HashingEmbedder(dim=64))
        assert restored.stats()["documents"] <= 12  # a whole snapshot: at most 4 short-term + 8 long-term

    threads = [threading.Thread(target=loop, args=(f,)) for f in (add, add, query, query, save)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so an unlocked race shows within the time
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    s = m.stats()
    assert s["long_term"]["size"] == 8 and s["short_term"]["size"] == (0 if arch == "mem" else 4)
    assert m.long_term.writes > 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary file left


def test_save_keeps_texts_out_of_the_header(tmp_path):
    """Texts and metadata live in tensors, so a save is not bounded by safetensors' 100 MB header limit
    (all texts went into the header before)."""
    m = TitansManager(_Prefix(dim=DIM), vector_dim=DIM)
    big = ["x" * 200_000 + f" document {i}" for i in range(10)]
    m.add_documents(big, memory_type="persistent", metadatas=[{"note": "y" * 10_000}] * 10)
    m.add_documents(["Ünïcödé ✓ 東京 \ud800 lone surrogate"])
    path = tmp_path / "m.safetensors"
    m.save(path)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert header < 20_000 and path.stat().st_size > 2_000_000
    restored = TitansManager.from_file(path, _Prefix(dim=DIM))
    assert restored._docs == m._docs and restored.stats() == m.stats()


class _Prefix(HashingEmbedder):
    """Hashes the first 64 characters only (fast on long texts)."""

    def embed(self, texts):
        return super().embed([t[:64] for t in texts])


@pytest.mark.slow
def test_save_and_load_more_than_100mb_of_text(tmp_path):
    class Constant(BaseEmbedder):
        dim = 8

        def embed(self, texts):
            return np.ones((len(texts), 8), np.float32)

    m = TitansManager(Constant(), vector_dim=8, persistent_size=110)
    texts = [f"{i} " + "z" * 1_000_000 for i in range(105)]
    m.add_documents(texts, memory_type="persistent")
    m.save(tmp_path / "big.safetensors")
    restored = TitansManager.from_file(tmp_path / "big.safetensors", Constant())
    assert [restored._docs[i][0] for i in range(105)] == texts


def test_load_of_a_pickle_runs_nothing(tmp_path):
    """A pickle (plain, or torch.save's zip) named like a save is refused before anything in it runs."""
    ran = tmp_path / "ran"
    payload = pickle.dumps(_Touch(tmp_path / "probe"))
    pickle.loads(payload)  # the payload is live: unpickling it runs its code
    assert (tmp_path / "probe").exists()
    (tmp_path / "plain.safetensors").write_bytes(pickle.dumps(_Touch(ran)))
    torch.save({"state": _Touch(ran)}, tmp_path / "torch.safetensors")
    for name in ("plain", "torch"):
        with pytest.raises(ValueError, match="not a valid TitansManager save"):
            manager().load(tmp_path / f"{name}.safetensors")
        with pytest.raises(ValueError, match="not a valid TitansManager save"):
            TitansManager.from_file(tmp_path / f"{name}.safetensors", HashingEmbedder(dim=DIM))
    assert not ran.exists()


class _Touch:
    """Unpickling this creates the file `path` (a stand-in for any code a pickle can run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_eviction_state_round_trips_through_save_load(tmp_path, corpus):
    """A full long-term store restored from a file evicts exactly as the original (retention, the heap's
    key, and the surprise window are restored, not rebuilt)."""
    cfg = LongTermMemoryConfig(forget_rate=0.5, surprise_threshold=0.3)
    m = manager(long_term_size=10, short_term_size=4, long_term_config=cfg)
    m.add_documents(corpus.docs[:40])
    assert m.long_term.evicted > 0
    m.save(tmp_path / "m.safetensors")
    r = TitansManager.from_file(tmp_path / "m.safetensors", HashingEmbedder(dim=DIM))
    np.testing.assert_array_equal(r.long_term.retention, m.long_term.retention)
    for x in (m, r):
        x.add_documents(corpus.docs[40:80])
    assert r.long_term.stored_ids() == m.long_term.stored_ids() and r.stats() == m.stats()
    assert m.long_term.evicted > 10


def test_every_held_document_keeps_its_text():
    """A document the long-term store evicted while its own add was still putting it into short-term
    memory lost its text (a later query of it raised KeyError); found by the threads test."""
    docs = make_corpus(300, seed=5).docs
    m = TitansManager(HashingEmbedder(dim=64), vector_dim=64, short_term_size=4, long_term_size=8)
    for i in range(90):  # the first loss was at add 78
        m.add_documents(docs[3 * i : 3 * i + 3], memory_type="short_term" if i % 2 else None)
        held = set(m.short_term.order()) | set(m.long_term.stored_ids())
        assert held <= set(m._docs), f"add {i}: documents {held - set(m._docs)} are held without text"
        assert set(m._docs) <= held  # and nothing else is kept
