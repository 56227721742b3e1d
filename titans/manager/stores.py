"""`VectorStore`: a fixed number of slots of unit vectors with document ids, searched exactly by cosine.

Short-term memory is a `VectorStore` used first-in first-out; persistent memory is one that never evicts.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from titans.manager.index import cosine, top_k


class VectorStore:
    """Up to `capacity` unit vectors `[D]` keyed by document id, in insertion order."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim, self.capacity = dim, capacity
        self.clear()

    def clear(self) -> None:
        self.vectors = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self.ids = np.full(self.capacity, -1, dtype=np.int64)
        self._slot_of: OrderedDict[int, int] = OrderedDict()  # id -> slot, oldest first
        self._free = list(range(self.capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: int) -> bool:
        return doc_id in self._slot_of

    def order(self) -> list[int]:
        """Document ids, oldest first."""
        return list(self._slot_of)

    def add(self, doc_id: int, vector: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Insert; when full, the oldest document leaves first. Returns (evicted id, its vector) or None.
        A store of capacity 0 holds nothing: the document itself comes back as evicted."""
        if self.capacity == 0:
            return doc_id, np.array(vector, dtype=np.float32)
        evicted = None
        if len(self._slot_of) >= self.capacity:
            old, slot = self._slot_of.popitem(last=False)
            evicted = (old, self.vectors[slot].copy())
        else:
            slot = self._free.pop()
        self.vectors[slot], self.ids[slot] = vector, doc_id
        self._slot_of[doc_id] = slot
        return evicted

    def remove(self, doc_id: int) -> None:
        slot = self._slot_of.pop(doc_id)
        self.ids[slot] = -1
        self._free.append(slot)

    def vector(self, doc_id: int) -> np.ndarray:
        return self.vectors[self._slot_of[doc_id]]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top-k for unit queries `[M, D]`: (scores, ids) `[M, min(k, len)]`, best first."""
        return top_k(cosine(queries, self.vectors), self.ids, k)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}vectors": torch.from_numpy(self.vectors.copy()),
            f"{prefix}ids": torch.from_numpy(self.ids.copy()),
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor], prefix: str, order: list[int]) -> None:
        """Restore from `to_tensors` output and the saved id order (oldest first)."""
        vectors, ids = tensors[f"{prefix}vectors"].numpy().copy(), tensors[f"{prefix}ids"].numpy().copy()
        if vectors.shape != self.vectors.shape or ids.shape != self.ids.shape:
            raise ValueError(f"saved {prefix}vectors has shape {vectors.shape}, expected {self.vectors.shape}")
        slot_of = {int(i): s for s, i in enumerate(ids) if i >= 0}
        if sorted(slot_of) != sorted(order):
            raise ValueError(f"saved {prefix} ids {sorted(slot_of)[:5]}... do not match the saved order")
        self.vectors, self.ids = vectors, ids
        self._slot_of = OrderedDict((i, slot_of[i]) for i in order)
        self._free = [s for s in range(self.capacity - 1, -1, -1) if ids[s] < 0]
