"""`MemoryState`: everything a neural memory carries from one call to the next, per sample and head."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from titans.io import atomic_path


@dataclass
class MemoryState:
    """Memory state of one `NeuralMemory` for a batch.

    weights:  name -> `[B, H, *param_shape]`, the memory weights M after the last complete chunk.
    momentum: name -> `[B, H, *param_shape]`, the past surprise S.
    buffer:   `[B, r, dim]`, raw inputs of the unfinished chunk (r < chunk_size); written when it completes.
    conv_context: `[B, c, dim]`, raw inputs just before `buffer` (c < conv kernel) so the causal conv
              of the next call sees the same left context as one long call.
    offset:   tokens seen so far.
    """

    weights: dict[str, Tensor]
    momentum: dict[str, Tensor]
    buffer: Tensor
    conv_context: Tensor
    offset: int = 0

    @property
    def batch_size(self) -> int:
        return self.buffer.shape[0]

    def _map(self, fn) -> MemoryState:
        return MemoryState(
            weights={k: fn(v) for k, v in self.weights.items()},
            momentum={k: fn(v) for k, v in self.momentum.items()},
            buffer=fn(self.buffer),
            conv_context=fn(self.conv_context),
            offset=self.offset,
        )

    def detach(self) -> MemoryState:
        """Cut the autograd graph (end of a bptt window)."""
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> MemoryState:
        """`Tensor.to` on every tensor (device and/or dtype)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def select(self, index: Tensor | list[int]) -> MemoryState:
        """Rows `index` of the batch (beam search reordering, dropping finished samples)."""
        index = torch.as_tensor(index, device=self.buffer.device)
        return self._map(lambda t: t.index_select(0, index))

    def to_tensors(self, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, str]]:
        """Flat tensors and string metadata for safetensors."""
        tensors = {f"{prefix}weights.{k}": v for k, v in self.weights.items()}
        tensors.update({f"{prefix}momentum.{k}": v for k, v in self.momentum.items()})
        tensors[f"{prefix}buffer"] = self.buffer
        tensors[f"{prefix}conv_context"] = self.conv_context
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        return tensors, {f"{prefix}offset": str(self.offset)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metadata: dict[str, str], prefix: str = "") -> MemoryState:
        def group(name: str) -> dict[str, Tensor]:
            start = f"{prefix}{name}."
            return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}

        missing = [k for k in (f"{prefix}buffer", f"{prefix}conv_context") if k not in tensors]
        if missing or f"{prefix}offset" not in metadata:
            raise ValueError(f"not a saved MemoryState (prefix {prefix!r}): missing {missing or [prefix + 'offset']}")
        return cls(
            weights=group("weights"),
            momentum=group("momentum"),
            buffer=tensors[f"{prefix}buffer"],
            conv_context=tensors[f"{prefix}conv_context"],
            offset=int(metadata[f"{prefix}offset"]),
        )

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file atomically."""
        from safetensors.torch import save_file

        tensors, meta = self.to_tensors()
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"titans_memory_state": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> MemoryState:
        from safetensors import SafetensorError, safe_open

        try:
            opened = safe_open(str(path), framework="pt", device=str(device))
        except SafetensorError as e:  # a pickle, a truncated file, ...: never unpickled, refused
            raise ValueError(f"{path} is not a safetensors MemoryState written by MemoryState.save ({e})") from e
        with opened as f:
            meta = f.metadata() or {}
            if "titans_memory_state" not in meta:
                raise ValueError(f"{path} is not a saved MemoryState (no 'titans_memory_state' metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls.from_tensors(tensors, json.loads(meta["titans_memory_state"]))
