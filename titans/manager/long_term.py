"""`LongTermMemory`: a `titans.memory.NeuralMemory` over document embeddings plus the store of kept documents.

Writing (test-time learning). Each document embedding e `[D]` is one token of one sequence (batch 1)
of the neural memory. Its q/k/v projections are fixed to `projection_scale · I` and its output
norm/gate/projection are off, so key k = ℓ2norm(SiLU(s·e)) and value v = SiLU(s·e) ≈ (s/2)·e: the
memory learns the autoassociation e -> e (paper Eq. 12-14: ℓ = ‖M(k) − v‖², momentum, forgetting).
Measured (docs/manager.md): random projections would store nothing retrievable, and a slot-code value
per document did not scale past ~D documents; the autoassociative memory reads a stored document's
own text back exactly and a paraphrase close to exact cosine.

Surprise. `NeuralMemory` reports each token's inner-gradient norm ‖∇ℓ‖ = 2‖k‖‖M(k) − v‖: how badly
the memory reconstructed the document before writing it (novelty). A document is kept in the store
when its relative surprise, surprise / median surprise of the last `surprise_window` writes, is
≥ `surprise_threshold` (relative, so defaults keep documents: absolute surprise falls by orders of
magnitude as the memory fills, and a percentile is biased by that trend).

Store. At most `capacity` kept documents, each with its key (the embedding, unit) and its value
(the memory's value vector, unit). Full store: the document with the lowest retention
`relative surprise · (1 − α)^(writes since)` (α the memory's per-write forget gate) leaves, unless the new
document's retention is lower still, then the new one is not kept. The memory's weights keep what an
evicted document wrote (weights cannot be unwritten); it only leaves the decoding table.

Reading. `read(queries)` returns M(q) for each query `[M, D]` with the current weights and writes
nothing (Eq. 15; the reader is the same memory with a chunk longer than the queries it reads). `search` maps reads
to kept documents by cosine between the read and each document's value; `search_keys` maps queries by
cosine with the documents' keys. Both go through the store's index (`titans.manager.index`: exact by
default, an HNSW graph with `LongTermMemoryConfig(index="usearch")`), one over the values, one over the keys.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

from titans.manager.config import LongTermMemoryConfig
from titans.manager.index import make_index, one_thread
from titans.memory import MemoryConfig, MemoryState, NeuralMemory

_READ_BATCH = 1024  # queries per reader call (the memory builds chunk x chunk coefficient tables)


class LongTermMemory:
    """Neural long-term memory over `dim`-wide unit embeddings with a store of up to `capacity` documents."""

    def __init__(self, dim: int, capacity: int, config: LongTermMemoryConfig | None = None) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"LongTermMemory(dim={dim!r}): allowed a positive int (the embedding width)")
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"LongTermMemory(capacity={capacity!r}): allowed a positive int (long_term_size)")
        self.dim, self.capacity = dim, capacity
        self.config = cfg = config or LongTermMemoryConfig()
        expansion = {} if cfg.expansion(dim) is None else {"expansion": cfg.expansion(dim)}
        mcfg = MemoryConfig(
            dim=dim, heads=1, depth=cfg.memory_depth, chunk_size=cfg.chunk_size, conv_kernel=0,
            input_norm=False, qk_l2_norm=True, output_norm=False, output_gate=False, **cfg.fixed_gates(capacity),
            **expansion,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.memory = NeuralMemory(mcfg)
        with torch.no_grad():
            self.memory.to_qkv.weight.copy_(torch.eye(dim).repeat(3, 1) * cfg.projection_scale)  # q, k, v = s·I
            if cfg.memory_depth == 1:  # a linear memory starts empty: surprise = novelty from the first write
                self.memory.memory_model.w0.zero_()
        self.memory.eval()
        # the same memory with other chunk sizes (parameters copied, never trained here):
        # `_tail` writes a call's last (len % chunk_size) documents so no document waits in a buffer;
        # `_reader` gets, per call, a chunk one longer than the queries it reads: no query completes it, so
        # every query reads the current weights (Eq. 15) and nothing is written.
        self._tail = self._view(1)
        self._reader = self._view(2)
        self._forget = float(mcfg.fixed_forget or 0.0)
        self.reset()

    def _view(self, chunk_size: int) -> NeuralMemory:
        view = copy.deepcopy(self.memory)
        view.config = dataclasses.replace(self.memory.config, chunk_size=chunk_size)
        return view

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget everything: initial memory weights, empty store, empty surprise statistics."""
        self.state: MemoryState = self.memory.init_state(1)
        self.keys = np.zeros((self.capacity, self.dim), dtype=np.float32)  # unit embeddings
        self.values = np.zeros((self.capacity, self.dim), dtype=np.float32)  # unit value vectors
        self.ids = np.full(self.capacity, -1, dtype=np.int64)  # document id per slot, -1 = free
        self.retention = np.full(self.capacity, np.inf, dtype=np.float64)  # log retention key (see module doc)
        self.surprise = np.zeros(self.capacity, dtype=np.float64)  # raw surprise at write time
        self.key_index = make_index(self.config.index, self.keys, self.ids)
        self.value_index = make_index(self.config.index, self.values, self.ids)
        self.window: deque[float] = deque(maxlen=self.config.surprise_window)
        self.writes = self.admitted = self.rejected = self.evicted = 0
        self.surprise_sum = self.surprise_max = 0.0  # over every write since the last reset
        self._slot_of: dict[int, int] = {}
        self._index()

    def _index(self) -> None:
        """Free-slot stack and a min-heap of (retention, slot, id) over the occupied slots (stale entries
        are skipped when popped), so a write costs O(log capacity) instead of a scan."""
        self._free = [s for s in range(self.capacity - 1, -1, -1) if self.ids[s] < 0]
        self._heap = [(float(self.retention[s]), s, int(self.ids[s])) for s in range(self.capacity) if self.ids[s] >= 0]
        heapq.heapify(self._heap)

    def _weakest(self) -> tuple[float, int]:
        """(retention, slot) of the kept document least worth keeping."""
        while True:
            key, slot, doc_id = self._heap[0]
            if self.ids[slot] == doc_id and self.retention[slot] == key:
                return key, slot
            heapq.heappop(self._heap)  # stale: that document left

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: int) -> bool:
        return doc_id in self._slot_of

    def stored_ids(self) -> list[int]:
        """Ids of the kept documents (slot order)."""
        return [int(i) for i in self.ids if i >= 0]

    # ------------------------------------------------------------------ write

    @torch.inference_mode()
    def write(self, embeddings: np.ndarray, doc_ids: list[int]) -> tuple[list[bool], list[int], np.ndarray]:
        """Write `embeddings` `[N, D]` (in order) into the memory and keep the surprising ones.

        Returns (kept `[N]` flags, ids evicted from the store, surprise `[N]`).
        """
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))[None]  # (1, N, D)
        n = x.shape[1]
        cut = n - n % self.config.chunk_size
        values, surprise = [], []
        for module, part in ((self.memory, x[:, :cut]), (self._tail, x[:, cut:])):
            if part.shape[1] == 0:
                continue
            with one_thread():
                _, self.state, aux = module(part, self.state, return_aux=True)
            values.append(aux["values"][0, 0])  # (n, D)
            surprise.append(aux["surprise"][0, 0])  # (n,)
        vals = F.normalize(torch.cat(values), dim=-1).numpy()
        surp = torch.cat(surprise).double().numpy()
        kept, evicted, changed = [], [], []
        keys = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        log_keep = np.log1p(-self._forget) if self._forget > 0 else 0.0
        for i in range(n):
            s = float(surp[i])
            ratio = self.relative_surprise(s)
            self.window.append(s)
            self.surprise_sum += s
            self.surprise_max = max(self.surprise_max, s)
            t = self.writes
            self.writes += 1
            if ratio < self.config.surprise_threshold:
                self.rejected += 1
                kept.append(False)
                continue
            # retention r·(1−α)^(now − t); ranking by log r − t·log(1−α) is the same at every "now"
            key = np.log(max(ratio, 1e-12)) - t * log_keep
            if self._free:
                slot = self._free.pop()
            else:
                weakest, slot = self._weakest()
                if weakest > key:  # the new document is the least worth keeping
                    self.rejected += 1
                    kept.append(False)
                    continue
                heapq.heappop(self._heap)
                old = int(self.ids[slot])
                del self._slot_of[old]
                evicted.append(old)
                self.evicted += 1
            self.keys[slot], self.values[slot], self.ids[slot] = keys[i], vals[i], doc_ids[i]
            changed.append(slot)
            self.retention[slot], self.surprise[slot] = key, s
            self._slot_of[int(doc_ids[i])] = slot
            heapq.heappush(self._heap, (float(key), slot, int(doc_ids[i])))
            self.admitted += 1
            kept.append(True)
        for index in (self.key_index, self.value_index):
            index.set(changed)
        return kept, evicted, surp

    def momentum_norm(self) -> float:
        """ℓ2 norm of the memory's momentum S (past surprise carried to the next write; 0 without momentum)."""
        return float(sum(float(v.double().pow(2).sum()) for v in self.state.momentum.values()) ** 0.5)

    def relative_surprise(self, surprise: float) -> float:
        """`surprise` over the median surprise of the last `surprise_window` writes (1.0 before any write)."""
        if not self.window:
            return 1.0
        median = float(np.median(np.fromiter(self.window, dtype=np.float64, count=len(self.window))))
        return surprise / median if median > 0 else (1.0 if surprise <= 0 else float("inf"))

    def remove(self, doc_id: int) -> None:
        """Drop a document from the store (its write stays in the memory's weights)."""
        slot = self._slot_of.pop(doc_id)
        self.ids[slot], self.retention[slot] = -1, np.inf
        self._free.append(slot)
        for index in (self.key_index, self.value_index):
            index.remove([slot])

    # ------------------------------------------------------------------ read

    @torch.inference_mode()
    def read(self, queries: np.ndarray) -> np.ndarray:
        """M(q) for each query embedding `[M, D]` -> unit reads `[M, D]` (value space ≈ embedding space).

        All queries read the current weights (one unfinished chunk of the reader); nothing is written.
        """
        x = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))[None]  # (1, M, D)
        reads = []
        for s in range(0, x.shape[1], _READ_BATCH):
            part = x[:, s : s + _READ_BATCH]
            # a chunk one longer than the queries: none completes it, so all read the current weights
            self._reader.config = dataclasses.replace(self._reader.config, chunk_size=part.shape[1] + 1)
            with one_thread():
                _, _, aux = self._reader(part, self.state, return_aux=True)
            reads.append(aux["retrieved"][0, 0].float())  # (m, D)
        return F.normalize(torch.cat(reads), dim=-1).numpy()  # (M, D)

    def search(self, reads: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept documents nearest to each read by cosine with their values: (scores, ids) `[M, k']`,
        k' = min(k, kept), best first."""
        return self.value_index.search(reads, k)

    def search_keys(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Kept documents nearest to each query by cosine with their keys (embeddings): `[M, k']`."""
        return self.key_index.search(queries, k)

    # ------------------------------------------------------------------ persistence

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON-able metadata of everything this memory holds (weights of the memory module too)."""
        tensors, meta = self.state.to_tensors(prefix="state.")
        tensors.update({f"module.{k}": v.detach().clone() for k, v in self.memory.state_dict().items()})
        for name in ("keys", "values", "ids", "retention", "surprise"):
            tensors[f"store.{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
        tensors["store.window"] = torch.tensor(list(self.window), dtype=torch.float64)
        for name in ("key_index", "value_index"):  # an approximate index's graph (exact: nothing to save)
            data = getattr(self, name).to_bytes()
            if data is not None:
                tensors[f"store.{name}"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        counters = {k: getattr(self, k) for k in ("writes", "admitted", "rejected", "evicted")}
        totals = {"surprise_sum": self.surprise_sum, "surprise_max": self.surprise_max}
        return tensors, {"state_meta": meta, "counters": counters, "surprise_totals": totals}

    def load_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what `to_tensors` wrote (shapes must match this memory's dim and capacity)."""
        module = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
        for m in (self.memory, self._tail, self._reader):
            m.load_state_dict(module)
        state = MemoryState.from_tensors(tensors, meta["state_meta"], prefix="state.")
        self.state = state
        for name in ("keys", "values", "ids", "retention", "surprise"):
            arr = tensors[f"store.{name}"].numpy().copy()
            if arr.shape != getattr(self, name).shape:
                want = getattr(self, name).shape
                raise ValueError(f"saved long-term store.{name} has shape {arr.shape}, expected {want}")
            setattr(self, name, arr)
        self.window = deque(tensors["store.window"].tolist(), maxlen=self.config.surprise_window)
        for k in ("writes", "admitted", "rejected", "evicted"):
            setattr(self, k, int(meta["counters"][k]))
        totals = meta.get("surprise_totals", {})  # absent in saves written before they were kept
        self.surprise_sum = float(totals.get("surprise_sum", 0.0))
        self.surprise_max = float(totals.get("surprise_max", 0.0))
        self._slot_of = {int(i): s for s, i in enumerate(self.ids) if i >= 0}
        self._index()
        for name, vectors in (("key_index", self.keys), ("value_index", self.values)):
            index, saved = getattr(self, name), tensors.get(f"store.{name}")
            if saved is None or not index.approximate:
                index.rebind(vectors, self.ids)  # exact, or a save without the graph: built from the vectors
            else:
                index.load_bytes(saved.numpy().tobytes(), vectors, self.ids)

