"""`TitansManager`: MemoryTitan's document-memory API on the real Titans neural memory.

Three memories hold documents (texts with optional JSON metadata):
- short-term: the last `short_term_size` documents, first-in first-out, searched by exact cosine;
- long-term: `LongTermMemory`, a `titans.memory.NeuralMemory` that learns each document at test time,
  plus a store of up to `long_term_size` surprising documents (see `titans.manager.long_term`);
- persistent: up to `persistent_size` task documents the user adds (`memory_type="persistent"`),
  always visible, never evicted.

How the architectures combine them for a unit query embedding q (docs/manager.md has the table):
- MAC (memory as context): the long-term read r = M(q) picks `candidates` long-term documents
  that no other memory shows (cosine of r with their values); they join every short-term and persistent document as the
  context, and the context is ranked by exact cosine cos(q, e_j) (attention over
  [persistent | long-term | short-term]).
- MAG (memory as gate): an attention branch a_j = cos(q, e_j) over short-term and persistent and a
  memory branch m_j = cos(r, v_j) over the top `candidates` long-term documents that are in neither
  (what the window lost; the branches are disjoint) are gated: score (1 − g)·a_j or g·m_j, with a
  per-query gate g = sigmoid((max m − max a) / gate_temperature): the stronger branch leads.
- MAL (memory as layer): the read refines the query first, q' = normalize(q + r), then exact cosine
  cos(q', e_j) over short-term, long-term and persistent documents.
A document in several memories appears once, labelled persistent > short_term > long_term.

Threads: every public method holds one re-entrant lock while it reads or changes the memories (texts
are embedded before it is taken), so adds, queries, saves and loads from several threads see whole
states, one at a time. The embedder is called from those threads concurrently: `HashingEmbedder` and
`CachedEmbedder` are safe; a custom one must be too (or be wrapped in a `CachedEmbedder`, which calls
its base under a lock).
"""

from __future__ import annotations

import json
import math
import threading
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from titans.embedders import check_texts, encode
from titans.io import atomic_path
from titans.manager.config import LongTermMemoryConfig
from titans.manager.index import cosine
from titans.manager.long_term import LongTermMemory
from titans.manager.stores import VectorStore


class ArchitectureType(str, Enum):
    """MemoryTitan's architecture names; `TitansManager(architecture=)` takes these or their strings."""

    MEMORY_AS_CONTEXT = "mac"
    MEMORY_AS_GATE = "mag"
    MEMORY_AS_LAYER = "mal"
    MEMORY_ONLY = "mem"  # the long-term memory alone (and persistent documents): no short-term memory


ARCHITECTURES = tuple(a.value for a in ArchitectureType)
MEMORY_TYPES = ("all", "short_term", "long_term", "persistent")
RANK_MODES = (*ARCHITECTURES, "short_term", "long_term", "persistent", "exact")
_FORMAT = "titans-manager/2"  # texts and metadata in tensors (/1 kept them in the header; still loaded)
_FORMATS = ("titans-manager/1", _FORMAT)


def _resolve(name: str, given: int | None, sources: list[tuple[str, int | None]], default: int) -> int:
    """`given`, else the first source that is set, else `default`; two set values that differ are an error."""
    values = ([(name, given)] if given is not None else []) + [s for s in sources if s[1] is not None]
    for (where_a, a), (where_b, b) in zip(values, values[1:]):
        if a != b:
            raise ValueError(f"TitansManager {name}: {where_a}={a} but {where_b}={b}; pass equal values or set one")
    return values[0][1] if values else default


def _check_memory_types(memory_types: object, caller: str, mode: str) -> frozenset[str]:
    """None -> every memory (the long-term memory alone for "mem", as in MemoryTitan); else a non-empty
    list of memory names (MemoryTitan's `memory_types`)."""
    allowed = MEMORY_TYPES[1:]
    if memory_types is None:
        return frozenset(["long_term"] if mode == "mem" else allowed)
    if isinstance(memory_types, str) or not isinstance(memory_types, (list, tuple, set, frozenset)):
        raise TypeError(f"{caller}(memory_types={memory_types!r}): a list of {allowed}, e.g. ['long_term']")
    bad = [t for t in memory_types if t not in allowed]
    if bad or not memory_types:
        raise ValueError(f"{caller}(memory_types={list(memory_types)!r}): allowed a non-empty list of {allowed}")
    return frozenset(memory_types)


def _positive_int(name: str, value: object, zero_ok: bool = False) -> int:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"TitansManager({name}={value!r}): allowed an int >= {low}")
    return value


class TitansManager:
    """Document memory with short-term, long-term (neural) and persistent memories.

    `add_documents(texts)` embeds texts (`[N, vector_dim]`) and stores them; `query(text, top_k)`
    returns up to `top_k` dicts `{content, score, source, metadata, id}`, best first, `source` in
    short_term / long_term / persistent.
    """

    def __init__(
        self,
        embedder: Any,
        architecture: str | ArchitectureType = "mac",
        short_term_size: int = 512,
        long_term_size: int | None = None,
        persistent_size: int = 64,
        vector_dim: int | None = None,
        long_term_config: LongTermMemoryConfig | None = None,
        candidates: int = 32,
        gate_temperature: float = 0.1,
        gate_factor: float | None = None,
    ) -> None:
        """long_term_size: default `long_term_config.max_capacity`, else 2048. vector_dim: default the
        embedder's `dim`, else `long_term_config.vector_dim`, else 384. gate_factor (MAG): None = the
        per-query gate (module docstring); a float in [0, 1] = MemoryTitan's fixed gate g."""
        if not callable(getattr(embedder, "embed", None)):
            raise TypeError(
                f"TitansManager(embedder={type(embedder).__name__}): needs an object with embed(texts) -> [N, D];"
                " subclass titans.embedders.BaseEmbedder"
            )
        arch = architecture.value if isinstance(architecture, ArchitectureType) else architecture
        arch = arch.lower() if isinstance(arch, str) else arch
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"TitansManager(architecture={architecture!r}): allowed one of {ARCHITECTURES} or an ArchitectureType"
            )
        if long_term_config is not None and not isinstance(long_term_config, LongTermMemoryConfig):
            raise TypeError(
                "TitansManager(long_term_config=...) needs a LongTermMemoryConfig,"
                f" got {type(long_term_config).__name__}"
            )
        cfg = long_term_config or LongTermMemoryConfig()
        emb_dim = getattr(embedder, "dim", None)
        dims = [("the embedder's dim", emb_dim), ("long_term_config.vector_dim", cfg.vector_dim)]
        vector_dim = _resolve("vector_dim", vector_dim, dims, 384)
        capacities = [("long_term_config.max_capacity", cfg.max_capacity)]
        long_term_size = _resolve("long_term_size", long_term_size, capacities, 2048)
        if not isinstance(gate_temperature, (int, float)) or not gate_temperature > 0:
            raise ValueError(f"TitansManager(gate_temperature={gate_temperature!r}): allowed a float > 0")
        if gate_factor is not None and (not isinstance(gate_factor, (int, float)) or not 0.0 <= gate_factor <= 1.0):
            raise ValueError(f"TitansManager(gate_factor={gate_factor!r}): allowed None (per-query gate) or [0, 1]")
        self.embedder = embedder
        self.architecture = arch
        self.vector_dim = _positive_int("vector_dim", vector_dim)
        self.short_term_size = _positive_int("short_term_size", short_term_size, zero_ok=True)
        self.long_term_size = _positive_int("long_term_size", long_term_size)
        self.persistent_size = _positive_int("persistent_size", persistent_size, zero_ok=True)
        self.candidates = _positive_int("candidates", candidates)
        self.gate_temperature = float(gate_temperature)
        self.gate_factor = None if gate_factor is None else float(gate_factor)
        self.long_term_config = cfg
        # "mem" (long-term memory only) has no short-term memory: its adds go to the long-term memory
        self.short_term = VectorStore(vector_dim, 0 if arch == "mem" else short_term_size)
        self.persistent = VectorStore(vector_dim, persistent_size)
        self.long_term = LongTermMemory(vector_dim, long_term_size, cfg)
        self._docs: dict[int, tuple[str, dict]] = {}  # id -> (content, metadata), for documents held anywhere
        self._pending: set[int] = set()  # short-term documents not yet written to the long-term memory
        self._next_id = 0
        self._lock = threading.RLock()  # see the module docstring

    # ------------------------------------------------------------------ adding

    def _embed(self, texts: list[str], name: str = "texts") -> np.ndarray:
        texts = check_texts(texts, name)
        emb = encode(self.embedder, texts)
        if emb.shape[1] != self.vector_dim:
            raise ValueError(
                f"the embedder made {emb.shape[1]}-dim vectors but TitansManager(vector_dim={self.vector_dim}):"
                f" pass vector_dim={emb.shape[1]} or use a {self.vector_dim}-dim embedder"
            )
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)  # unit rows (an all-zero row stays zero)

    def add_documents(
        self,
        texts: list[str],
        memory_type: str | None = None,
        consolidate: bool = False,
        metadatas: list[dict] | None = None,
    ) -> list[int]:
        """Embed and store `texts`; returns their document ids.

        memory_type: None / "all" (default): written to the long-term memory now (kept in its store
        when surprising) and put in short-term memory. "short_term": short-term only; written to the
        long-term memory by `consolidate_memories()` or when it leaves short-term memory.
        "long_term": written to the long-term memory only. "persistent": task documents, always
        visible (at most `persistent_size`). With architecture "mem" (no short-term memory) "all" and
        "short_term" are written to the long-term memory. consolidate: run `consolidate_memories()`
        afterwards (MemoryTitan's default was True; here nothing waits unwritten for long, see above).
        metadatas: one JSON-serialisable dict per text, or None.
        """
        kind = "all" if memory_type is None else memory_type
        if kind not in MEMORY_TYPES:
            raise ValueError(f"add_documents(memory_type={memory_type!r}): allowed None or one of {MEMORY_TYPES}")
        if not isinstance(consolidate, bool):
            raise TypeError(
                f"add_documents(consolidate=...) must be a bool, got {type(consolidate).__name__}"
                " (pass metadatas by keyword: metadatas=[...])"
            )
        if self.architecture == "mem" and kind in ("all", "short_term"):
            kind = "long_term"
        texts = check_texts(texts)
        metas = self._check_metadatas(metadatas, len(texts))
        self._check_persistent_room(kind, len(texts))  # before embedding; again under the lock
        emb = self._embed(texts)
        with self._lock:
            ids = self._add(emb, texts, metas, kind)
            if consolidate:
                self._consolidate()
            return ids

    def _check_persistent_room(self, kind: str, n: int) -> None:
        if kind == "persistent" and len(self.persistent) + n > self.persistent_size:
            raise ValueError(
                f"add_documents(memory_type='persistent'): {n} more documents exceed persistent_size="
                f"{self.persistent_size} ({len(self.persistent)} held); raise persistent_size or add fewer"
            )

    def _add(self, emb: np.ndarray, texts: list[str], metas: list[dict], kind: str) -> list[int]:
        self._check_persistent_room(kind, len(texts))
        ids = list(range(self._next_id, self._next_id + len(texts)))
        self._next_id += len(texts)
        for i, text, meta in zip(ids, texts, metas):
            self._docs[i] = (text, meta)
        # texts of documents that may have left every memory are dropped at the end only: a document the
        # long-term store evicts during this call may still be about to enter short-term memory
        left: list[int] = []
        if kind == "persistent":
            for i, vec in zip(ids, emb):
                self.persistent.add(i, vec)
        elif kind == "long_term":
            left += self._write_long_term(emb, ids)
        elif kind == "all":  # written first (in order), then into short-term memory
            left += self._write_long_term(emb, ids)
            left += self._push_short_term(emb, ids)
        else:
            self._pending.update(ids)
            left += self._push_short_term(emb, ids)
        self._drop_unheld(left)
        return ids

    @staticmethod
    def _check_metadatas(metadatas: list[dict] | None, n: int) -> list[dict]:
        if metadatas is None:
            return [{} for _ in range(n)]
        if not isinstance(metadatas, (list, tuple)) or len(metadatas) != n:
            got = len(metadatas) if isinstance(metadatas, (list, tuple)) else type(metadatas).__name__
            raise ValueError(f"add_documents(metadatas=...): expected a list of {n} dicts (one per text), got {got}")
        for i, meta in enumerate(metadatas):
            if not isinstance(meta, dict):
                raise TypeError(f"metadatas[{i}] must be a dict, got {type(meta).__name__}")
            try:
                json.dumps(meta)
            except (TypeError, ValueError) as err:
                raise TypeError(f"metadatas[{i}] must be JSON-serialisable (it is saved): {err}") from None
        return [dict(m) for m in metadatas]

    def _write_long_term(self, emb: np.ndarray, ids: list[int]) -> list[int]:
        """Write into the long-term memory; returns the ids the store did not keep or evicted."""
        kept, evicted, _ = self.long_term.write(emb, ids)
        return [i for i, k in zip(ids, kept) if not k] + evicted

    def _push_short_term(self, emb: np.ndarray, ids: list[int]) -> list[int]:
        """Into short-term memory; returns the ids that left it or the long-term store meanwhile."""
        left = []
        for i, vec in zip(ids, emb):
            evicted = self.short_term.add(i, vec)
            if evicted is None:
                continue
            old, old_vec = evicted
            if old in self._pending:  # leaving short-term memory unwritten: consolidate it now
                self._pending.discard(old)
                left += self._write_long_term(old_vec[None], [old])
            left.append(old)
        return left

    def _drop_unheld(self, doc_ids: list[int]) -> None:
        """Forget the texts of the documents no memory holds."""
        for doc_id in doc_ids:
            if doc_id not in self.short_term and doc_id not in self.long_term and doc_id not in self.persistent:
                self._docs.pop(doc_id, None)

    def consolidate_memories(self) -> int:
        """Write every short-term document not yet written (oldest first) into the long-term memory.

        Returns how many of them the long-term store kept.
        """
        with self._lock:
            return self._consolidate()

    def _consolidate(self) -> int:
        order = [i for i in self.short_term.order() if i in self._pending]
        if not order:
            return 0
        self._pending.clear()
        before = self.long_term.admitted
        self._drop_unheld(self._write_long_term(np.stack([self.short_term.vector(i) for i in order]), order))
        return self.long_term.admitted - before

    # ------------------------------------------------------------------ querying

    def query(self, text: str, top_k: int = 5, memory_types: list[str] | None = None) -> list[dict]:
        """The `top_k` best documents for `text`: `[{content, score, source, metadata, id}]`, best first.

        memory_types: results only from these memories (a list of "short_term", "long_term",
        "persistent"); None = all ("mem": the long-term memory). The architecture's computation (the
        memory read, MAG's gate) is the same whichever memories are asked.
        """
        if not isinstance(text, str):
            raise TypeError(f"query(text=...) must be a str, got {type(text).__name__}")
        return self.query_many([text], top_k, memory_types)[0]

    def query_many(self, texts: list[str], top_k: int = 5, memory_types: list[str] | None = None) -> list[list[dict]]:
        """`query` for several texts at once (one embedding call, one memory read)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"query(top_k={top_k!r}): allowed an int >= 1")
        use = _check_memory_types(memory_types, "query", self.architecture)
        q = self._embed(texts, "text" if len(texts) == 1 else "texts")
        with self._lock:  # rank and read the texts in one state (an add may drop a ranked document's text)
            ranked = self._rank(q, top_k, self.architecture, use)
            return [[self._result(i, s, src) for i, s, src in r] for r in ranked]

    def _result(self, doc_id: int, score: float, source: str) -> dict:
        content, meta = self._docs[doc_id]
        return {"content": content, "score": float(score), "source": source, "metadata": dict(meta), "id": doc_id}

    def _source(self, doc_id: int, use: frozenset[str] = frozenset(MEMORY_TYPES[1:])) -> str:
        if doc_id in self.persistent and "persistent" in use:
            return "persistent"
        return "short_term" if doc_id in self.short_term and "short_term" in use else "long_term"

    def rank(
        self, queries: np.ndarray, top_k: int, mode: str, memory_types: list[str] | None = None
    ) -> list[list[tuple[int, float, str]]]:
        """Rank documents for unit query embeddings `[M, D]` -> per query `[(id, score, source)]`.

        mode: an architecture ("mac", "mag", "mal", "mem") or one memory alone: "short_term" (exact
        cosine), "long_term" (the memory read decoded against the store), "persistent", "exact" (cosine
        over every held document: the ceiling). memory_types: as in `query`.
        """
        if mode not in RANK_MODES:
            raise ValueError(f"rank(mode={mode!r}): allowed one of {RANK_MODES}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"rank(top_k={top_k!r}): allowed an int >= 1")
        use = _check_memory_types(memory_types, "rank", mode)
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.vector_dim:
            raise ValueError(f"rank(queries): expected unit vectors [M, {self.vector_dim}], got shape {queries.shape}")
        with self._lock:
            return self._rank(queries, top_k, mode, use)

    def _rank(
        self, queries: np.ndarray, top_k: int, mode: str, use: frozenset[str]
    ) -> list[list[tuple[int, float, str]]]:
        m_q = len(queries)
        none = (np.zeros((m_q, 0), np.float32), np.zeros((m_q, 0), np.int64))  # a memory left out: no results

        def search(kind: str, store: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return store.search(q, k) if kind in use else none

        if mode == "short_term":
            return self._pack(*search("short_term", self.short_term, queries, top_k), "short_term")
        if mode == "persistent":
            return self._pack(*search("persistent", self.persistent, queries, top_k), "persistent")
        if mode in ("long_term", "mac", "mag", "mal", "mem"):
            reads = self.long_term.read(queries)
        if mode == "long_term":
            return self._pack(*search("long_term", self.long_term, reads, top_k), "long_term")
        if mode == "mem":  # the long-term memory's read decoded against its store (+ persistent when asked)
            lt = search("long_term", self.long_term, reads, top_k)
            parts = [lt, search("persistent", self.persistent, queries, top_k)]
            return [self._merge(parts, m, top_k, use) for m in range(m_q)]
        if mode == "mal":
            queries = reads + queries
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        # one score per mode across memories, so each memory's own top_k is enough for the union's top_k
        st = search("short_term", self.short_term, queries, top_k)
        pe = search("persistent", self.persistent, queries, top_k)
        if mode in ("mal", "exact"):
            lt = self.long_term.search_keys(queries, top_k) if "long_term" in use else none
            return [self._merge([st, pe, lt], m, top_k, use) for m in range(m_q)]

        # the memory's candidates: the long-term documents no other (used) memory shows (what the window lost)
        def shown(i: int) -> bool:
            return (i in self.short_term and "short_term" in use) or (i in self.persistent and "persistent" in use)

        n_shown = len(self.short_term) * ("short_term" in use) + len(self.persistent) * ("persistent" in use)
        lt_scores, lt_ids = search("long_term", self.long_term, reads, max(self.candidates, top_k) + n_shown)
        out = []
        for m in range(m_q):
            # (an approximate index pads a short answer with id -1)
            fresh_at = [c for c, i in enumerate(lt_ids[m]) if i >= 0 and not shown(int(i))]
            fresh_at = fresh_at[: max(self.candidates, top_k)]
            if mode == "mac":  # candidates join the context; the context is ranked by exact cosine with q
                fresh = np.array([lt_ids[m][c] for c in fresh_at], dtype=np.int64)
                keys = self.long_term.keys[[self.long_term._slot_of[int(i)] for i in fresh]]  # (n, D)
                lt_exact = cosine(queries[m : m + 1], keys)  # (1, n)
                row = slice(m, m + 1)
                parts = [(st[0][row], st[1][row]), (pe[0][row], pe[1][row]), (lt_exact, fresh[None])]
                out.append(self._merge(parts, 0, top_k, use))
                continue
            # MAG: (1 − g)·attention + g·memory with a per-query gate (or MemoryTitan's fixed gate_factor)
            attn: dict[int, float] = {}
            for scores, ids in (st, pe):
                attn.update({int(i): float(s) for s, i in zip(scores[m], ids[m])})
            mem = {int(lt_ids[m][c]): float(lt_scores[m][c]) for c in fresh_at}
            if not mem:
                g = 0.0
            elif not attn:
                g = 1.0
            elif self.gate_factor is not None:
                g = self.gate_factor
            else:
                g = 1.0 / (1.0 + math.exp(-(max(mem.values()) - max(attn.values())) / self.gate_temperature))
            mixed = {i: (1 - g) * a for i, a in attn.items()}
            mixed.update({i: g * v for i, v in mem.items()})
            best = sorted(mixed.items(), key=lambda kv: -kv[1])[:top_k]
            out.append([(i, s, self._source(i, use)) for i, s in best])
        return out

    def _pack(self, scores: np.ndarray, ids: np.ndarray, source: str) -> list[list[tuple[int, float, str]]]:
        return [[(int(i), float(s), source) for s, i in zip(sr, ir) if i >= 0] for sr, ir in zip(scores, ids)]

    def _merge(self, parts: list, m: int, top_k: int, use: frozenset[str]) -> list[tuple[int, float, str]]:
        """Union of (scores, ids) `[M, k]` pairs for query m: one entry per id (its best score), top_k."""
        best: dict[int, float] = {}
        for scores, ids in parts:
            for s, i in zip(scores[m], ids[m]):
                i = int(i)
                if i < 0:  # padding of an approximate index
                    continue
                if i not in best or s > best[i]:
                    best[i] = float(s)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
        return [(i, s, self._source(i, use)) for i, s in ranked]

    # ------------------------------------------------------------------ housekeeping

    def clear(self, memory_types: list[str] | None = None) -> None:
        """Empty the given memories (default: all three). Clearing long_term also resets the neural
        memory's weights and surprise statistics."""
        kinds = ["short_term", "long_term", "persistent"] if memory_types is None else memory_types
        for kind in kinds:
            if kind not in MEMORY_TYPES[1:]:
                raise ValueError(f"clear(memory_types=[..., {kind!r}]): allowed {MEMORY_TYPES[1:]}")
        with self._lock:
            if "short_term" in kinds:
                self.short_term.clear()
                self._pending.clear()
            if "long_term" in kinds:
                self.long_term.reset()
            if "persistent" in kinds:
                self.persistent.clear()
            self._drop_unheld(list(self._docs))

    def stats(self) -> dict[str, Any]:
        """Sizes, capacities and long-term write statistics (JSON-serialisable). MemoryTitan's keys are
        included: short_term utilization; long_term avg_surprise / max_surprise (over every write since
        the last clear), forget_rate, momentum (the norm of the memory's momentum S); persistent
        num_vectors and vector_dim."""
        with self._lock:
            lt = self.long_term
            window = np.fromiter(lt.window, dtype=np.float64, count=len(lt.window))
            st_capacity = self.short_term.capacity  # 0 for "mem"
            return {
                "architecture": self.architecture,
                "vector_dim": self.vector_dim,
                "documents": len(self._docs),
                "short_term": {
                    "size": len(self.short_term),
                    "capacity": st_capacity,
                    "utilization": len(self.short_term) / st_capacity if st_capacity else 0.0,
                    "pending": len(self._pending),
                },
                "long_term": {
                    "size": len(lt),
                    "capacity": self.long_term_size,
                    "writes": lt.writes,
                    "admitted": lt.admitted,
                    "rejected": lt.rejected,
                    "evicted": lt.evicted,
                    "surprise_mean": float(window.mean()) if len(window) else None,
                    "surprise_std": float(window.std()) if len(window) else None,
                    "avg_surprise": lt.surprise_sum / lt.writes if lt.writes else 0.0,
                    "max_surprise": lt.surprise_max,
                    "forget_rate": self.long_term_config.forget_rate,
                    "momentum": lt.momentum_norm(),
                    "gates": self.long_term_config.fixed_gates(self.long_term_size),
                    "config": self.long_term_config.to_dict(),
                },
                "persistent": {
                    "size": len(self.persistent),
                    "capacity": self.persistent_size,
                    "num_vectors": len(self.persistent),
                    "vector_dim": self.vector_dim,
                },
            }

    # MemoryTitan's names for the same methods (docs/manager.md has the migration table)
    get_stats = stats
    clear_memories = clear

    def settings(self) -> dict[str, Any]:
        """Constructor arguments (less the embedder) as a JSON-serialisable dict."""
        return {
            "architecture": self.architecture,
            "short_term_size": self.short_term_size,
            "long_term_size": self.long_term_size,
            "persistent_size": self.persistent_size,
            "vector_dim": self.vector_dim,
            "long_term_config": self.long_term_config.to_dict(),
            "candidates": self.candidates,
            "gate_temperature": self.gate_temperature,
            "gate_factor": self.gate_factor,
        }

    def save(self, path: str | Path) -> None:
        """Write everything (settings, documents, the three memories, the neural memory's state and
        statistics) to one safetensors file, atomically (`titans.io`). Texts and metadata go in tensors (utf-8
        bytes + offsets), so their total size is not bounded by the header. The embedder is not saved."""
        from safetensors.torch import save_file

        path = Path(path)
        with self._lock:
            tensors: dict[str, torch.Tensor] = {}
            lt_tensors, lt_meta = self.long_term.to_tensors()
            tensors.update({f"long_term.{k}": v.contiguous() for k, v in lt_tensors.items()})
            tensors.update(self.short_term.to_tensors("short_term."))
            tensors.update(self.persistent.to_tensors("persistent."))
            tensors.update(_docs_to_tensors(self._docs))
            meta = {
                "format": _FORMAT,
                "settings": self.settings(),
                "next_id": self._next_id,
                "short_term_order": self.short_term.order(),
                "persistent_order": self.persistent.order(),
                "pending": sorted(self._pending),
                "long_term": lt_meta,
            }
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={"titans_manager": json.dumps(meta)})

    def load(self, path: str | Path) -> TitansManager:
        """Replace this manager's settings and contents with a file written by `save` (keeps the embedder).

        Only safetensors is read (no pickle: nothing in the file can run code). Raises FileNotFoundError
        for a missing file and ValueError for a corrupt or foreign one (this manager is then unchanged).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TitansManager.load: no file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("titans_manager")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if raw is None:
                raise ValueError("no 'titans_manager' metadata (not written by TitansManager.save)")
            meta = json.loads(raw)
            if meta.get("format") not in _FORMATS:
                raise ValueError(f"format {meta.get('format')!r}, expected one of {_FORMATS}")
            s = dict(meta["settings"])
            s["long_term_config"] = LongTermMemoryConfig.from_dict(s["long_term_config"])
            fresh = TitansManager(self.embedder, **s)
            fresh.long_term.load_tensors({k[len("long_term.") :]: v for k, v in tensors.items()
                                          if k.startswith("long_term.")}, meta["long_term"])  # fmt: skip
            fresh.short_term.load_tensors(tensors, "short_term.", [int(i) for i in meta["short_term_order"]])
            fresh.persistent.load_tensors(tensors, "persistent.", [int(i) for i in meta["persistent_order"]])
            if meta["format"] == _FORMATS[0]:
                fresh._docs = {int(i): (str(text), dict(m)) for i, text, m in meta["docs"]}
            else:
                fresh._docs = _docs_from_tensors(tensors)
            fresh._pending = {int(i) for i in meta["pending"]}
            fresh._next_id = int(meta["next_id"])
            held = set(fresh.short_term.order()) | set(fresh.persistent.order()) | set(fresh.long_term.stored_ids())
            if not held <= set(fresh._docs):
                raise ValueError(f"documents {sorted(held - set(fresh._docs))[:5]} are stored but have no text")
        except FileNotFoundError:
            raise
        except Exception as err:  # safetensors, JSON and shape errors all mean the same thing to the caller
            raise ValueError(
                f"TitansManager.load({str(path)!r}): not a valid TitansManager save ({type(err).__name__}: {err});"
                " write it again with TitansManager.save"
            ) from err
        with self._lock:
            fresh.__dict__.pop("_lock")  # keep this manager's lock: other threads may be waiting on it
            self.__dict__.update(fresh.__dict__)
        return self

    @classmethod
    def from_file(cls, path: str | Path, embedder: Any) -> TitansManager:
        """A manager restored from `save`'s file, using `embedder` (it must make the saved vector_dim)."""
        with open(path, "rb") as f:  # FileNotFoundError before any construction
            f.read(8)
        s = _peek_settings(path)
        manager = cls(embedder, vector_dim=s.get("vector_dim", 384))
        return manager.load(path)


def _docs_to_tensors(docs: dict[int, tuple[str, dict]]) -> dict[str, torch.Tensor]:
    """Documents as tensors: ids `[N]`, texts as one utf-8 byte blob with offsets `[N + 1]`, metadata as
    one JSON array (utf-8 bytes). "surrogatepass" keeps any Python str (lone surrogates too)."""
    ids = list(docs)
    blobs = [docs[i][0].encode("utf-8", "surrogatepass") for i in ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    metas = json.dumps([docs[i][1] for i in ids]).encode("utf-8")
    return {
        "docs.ids": torch.tensor(ids, dtype=torch.int64),
        "docs.text": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if offsets[-1] else
        torch.zeros(0, dtype=torch.uint8),
        "docs.text_offsets": torch.from_numpy(offsets),
        "docs.metadata": torch.frombuffer(bytearray(metas), dtype=torch.uint8),
    }  # fmt: skip


def _docs_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[int, tuple[str, dict]]:
    ids = tensors["docs.ids"].tolist()
    blob = tensors["docs.text"].numpy().tobytes()
    offsets = tensors["docs.text_offsets"].tolist()
    metas = json.loads(tensors["docs.metadata"].numpy().tobytes().decode("utf-8"))
    if len(offsets) != len(ids) + 1 or len(metas) != len(ids) or offsets[-1] != len(blob):
        raise ValueError(f"{len(ids)} document ids but {len(offsets)} text offsets and {len(metas)} metadata")
    texts = [blob[offsets[j] : offsets[j + 1]].decode("utf-8", "surrogatepass") for j in range(len(ids))]
    return {int(i): (t, dict(m)) for i, t, m in zip(ids, texts, metas)}


def _peek_settings(path: str | Path) -> dict:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["titans_manager"])["settings"]
    except Exception as err:
        raise ValueError(f"TitansManager.from_file({str(path)!r}): not a valid TitansManager save ({err})") from err
