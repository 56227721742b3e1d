"""How the long-term store finds the vectors nearest a query: exact search (the default) or an approximate index.

A store keeps its unit vectors in a fixed array of slots `[capacity, D]` with a document id per slot
(-1 = free). An index answers top-k by inner product (= cosine for unit vectors) over the occupied slots,
behind one interface:

- `ExactIndex`: a matrix product over the slots, single-threaded torch (`cosine`, `top_k`). Exact; cost
  grows with the store (about 1 ms per query at 10K documents, 100 ms at 1M, on one busy core).
- `UsearchIndex`: an HNSW graph (the `usearch` package, `pip install usearch`, in the `ann` extra).
  Approximate: recall@10 against exact search and speed in docs/manager.md. Kept in step with the slots
  on every write (`set`) and eviction (`remove`).

`IndexConfig` chooses one (`LongTermMemoryConfig(index=...)`). Why usearch, of the four candidates that
all installed here: hnswlib only by compiling (no wheel for this Python, last release 2023-12); faiss-cpu's
HNSW cannot remove vectors (`remove_ids` raises; the store evicts, so it would need rebuilds or
tombstones) and its thread count is process-global OpenMP state; voyager (kept, wheel, removal and
re-adding) was a close second, slower to build here (20K x 384, one thread: 3.7K vectors/s against
usearch's 5.6K in f16 at the same recall@10 0.997-0.998). usearch has wheels and frequent releases,
removal, per-call thread counts, f16 / i8 storage (half / a quarter of the vectors' memory), `contains` /
`get` to check a restored graph against the store, and serialises to bytes, which go into the manager's
safetensors file as a uint8 tensor (no pickle).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from titans.memory.config import DictRoundTrip, config_error

INDEX_KINDS = ("exact", "usearch")
_DTYPES = ("f32", "f16", "i8")


@dataclass
class IndexConfig(DictRoundTrip):
    """Which index searches the long-term store, and the HNSW settings of the approximate one.

    kind: "exact" (default) or "usearch". dtype: how usearch stores vectors (f16 default: half of f32's
    memory, the same recall@10 here and a faster build; i8 a quarter, at lower recall). connectivity:
    graph edges per node (M). expansion_add / expansion_search: candidate-list sizes when inserting /
    searching (ef; a search uses at least k). threads: per call (1: the manager runs single-threaded on
    a shared machine; 0 = all cores).
    """

    kind: str = "exact"
    dtype: str = "f16"
    connectivity: int = 32
    expansion_add: int = 128
    expansion_search: int = 256
    threads: int = 1

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            config_error("IndexConfig", "kind", self.kind, f"one of {INDEX_KINDS}")
        if self.dtype not in _DTYPES:
            config_error("IndexConfig", "dtype", self.dtype, f"one of {_DTYPES}")
        for key in ("connectivity", "expansion_add", "expansion_search"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                config_error("IndexConfig", key, value, "an int >= 2")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            config_error("IndexConfig", "threads", self.threads, "an int >= 0 (0 = all cores)")


def make_index(config: IndexConfig, vectors: np.ndarray, ids: np.ndarray) -> ExactIndex | UsearchIndex:
    """The index `config` names over a store's slot arrays `vectors` `[capacity, D]` and `ids` `[capacity]`."""
    if config.kind == "exact":
        return ExactIndex(vectors, ids)
    return UsearchIndex(config, vectors, ids)


class ExactIndex:
    """Exact top-k over the store's arrays (read in place: nothing to keep in step, nothing to save)."""

    approximate = False

    def __init__(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.vectors, self.ids = vectors, ids

    def set(self, slots: list[int]) -> None:
        """The vectors of `slots` changed (nothing to do: the arrays are read at search time)."""

    def remove(self, slots: list[int]) -> None:
        """`slots` were freed (nothing to do)."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents for unit queries `[M, D]`: (scores, ids) `[M, min(k, occupied)]`, best first."""
        return top_k(cosine(queries, self.vectors), self.ids, k)

    def rebind(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """The store replaced its arrays (a load)."""
        self.vectors, self.ids = vectors, ids

    def to_bytes(self) -> bytes | None:
        return None


class UsearchIndex:
    """An HNSW graph over the occupied slots (keys = slot numbers), kept in step by the store."""

    approximate = True

    def __init__(self, config: IndexConfig, vectors: np.ndarray, ids: np.ndarray) -> None:
        try:
            from usearch.index import Index
        except ImportError as err:
            raise ImportError(
                "IndexConfig(kind='usearch') needs the usearch package: pip install usearch"
                " (or pip install 'titans[ann]'); kind='exact' needs nothing"
            ) from err
        self._Index = Index
        self.config = config
        self.vectors, self.ids = vectors, ids
        self._graph = self._new()

    def _new(self):
        c = self.config
        return self._Index(ndim=self.vectors.shape[1], metric="ip", dtype=c.dtype, connectivity=c.connectivity,
                           expansion_add=c.expansion_add, expansion_search=c.expansion_search)  # fmt: skip

    def __len__(self) -> int:
        return len(self._graph)

    def set(self, slots: list[int]) -> None:
        """Put the current vectors of `slots` (occupied) into the graph, replacing what they held."""
        slots = np.unique(np.asarray(slots, dtype=np.uint64))
        if len(slots) == 0:
            return
        held = slots[np.asarray(self._graph.contains(slots), dtype=bool).reshape(-1)]
        if len(held):
            self._graph.remove(held)
        vecs = np.ascontiguousarray(self.vectors[slots.astype(np.int64)], dtype=np.float32)
        self._graph.add(slots, vecs, threads=self.config.threads)

    def remove(self, slots: list[int]) -> None:
        slots = np.asarray(slots, dtype=np.uint64)
        held = slots[np.asarray(self._graph.contains(slots), dtype=bool).reshape(-1)] if len(slots) else slots
        if len(held):
            self._graph.remove(held)

    def clear(self) -> None:
        self._graph = self._new()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: (scores, ids) `[M, k']`, k' = min(k, occupied), best first; a row the graph
        answers with fewer is padded with id -1 and score -inf."""
        n = len(self._graph)
        k = min(k, n)
        m = len(queries)
        if k == 0:
            return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        found = self._graph.search(q, k, threads=self.config.threads)
        keys = np.zeros((m, k), np.int64)
        if hasattr(found, "counts"):  # several queries: [M, k] arrays and a count per row
            counts = np.asarray(found.counts, dtype=np.int64).reshape(m)
            keys[:] = np.asarray(found.keys, dtype=np.int64).reshape(m, -1)[:, :k]
        else:  # one query: the matches found, [count]
            counts = np.array([len(found.keys)])
            keys[0, : counts[0]] = np.asarray(found.keys, dtype=np.int64)[:k]
        valid = np.arange(k)[None, :] < counts[:, None]
        slots = np.where(valid, keys, 0)
        ids = np.where(valid, self.ids[slots], -1)
        # the graph found them; their scores are recomputed from the store's float32 vectors, so they equal
        # exact search's (f16 / i8 distances would be off by ~1e-3) and mix with other memories' scores
        exact = np.einsum("mkd,md->mk", self.vectors[slots], q)
        order = np.argsort(-np.where(valid, exact, -np.inf), axis=1, kind="stable")
        scores = np.take_along_axis(np.where(valid, exact, -np.inf), order, axis=1).astype(np.float32)
        ids = np.take_along_axis(ids, order, axis=1)
        return scores, ids

    def rebind(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """The store replaced its arrays: rebuild the graph from them."""
        self.vectors, self.ids = vectors, ids
        self._graph = self._new()
        self.set(np.flatnonzero(ids >= 0).tolist())

    def to_bytes(self) -> bytes:
        return bytes(self._graph.save())

    def load_bytes(self, data: bytes, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Restore a graph saved by `to_bytes` over the store's (already restored) arrays. It must hold
        exactly the occupied slots with their vectors (checked; a mismatch raises ValueError)."""
        graph = self._Index.restore(bytearray(data))
        if graph is None:
            raise ValueError("the saved index is not a usearch index")
        occupied = np.flatnonzero(ids >= 0).astype(np.uint64)
        if graph.ndim != vectors.shape[1] or len(graph) != len(occupied):
            raise ValueError(f"the saved index holds {len(graph)} vectors of width {graph.ndim}, the store "
                             f"{len(occupied)} of width {vectors.shape[1]}")  # fmt: skip
        if len(occupied):
            if not np.asarray(graph.contains(occupied), dtype=bool).all():
                raise ValueError("the saved index does not hold the store's occupied slots")
            got = np.asarray(graph.get(occupied), dtype=np.float32).reshape(len(occupied), -1)
            tol = {"f32": 1e-6, "f16": 2e-3, "i8": 2e-2}[self.config.dtype]
            if not np.allclose(got, vectors[occupied.astype(np.int64)], atol=tol):
                raise ValueError("the saved index's vectors differ from the store's")
        graph.expansion_add = self.config.expansion_add  # not kept in usearch's file
        graph.expansion_search = self.config.expansion_search
        self.vectors, self.ids, self._graph = vectors, ids, graph


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded inside: the manager's products are small (or a chain of tiny per-document
    matmuls in a write), where intra-op threads only add synchronisation (a write was 36x slower with 2
    threads on a busy 2-core machine)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def cosine(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """`queries @ vectors.T` (`[M, D] x [S, D] -> [M, S]`) through single-threaded torch: numpy's BLAS
    threads were 10-50x slower for these small products on a busy 2-core machine (measured)."""
    a = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    with one_thread():
        return (a @ b.T).numpy()


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `scores` `[M, S]` over occupied slots (`ids >= 0`): (scores, ids) `[M, min(k, occupied)]`."""
    occupied = ids >= 0
    k = min(k, int(occupied.sum()))
    if k == 0:
        return np.zeros((scores.shape[0], 0), np.float32), np.zeros((scores.shape[0], 0), np.int64)
    scores = np.where(occupied[None], scores, -np.inf)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, best, axis=1).astype(np.float32), ids[best]
