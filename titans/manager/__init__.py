"""Document memory: MemoryTitan's `TitansManager` API on the real Titans neural memory.

`from titans.manager import TitansManager, LongTermMemoryConfig`; see docs/manager.md. The embedders
are handed on here too, so MemoryTitan code that imported everything from its package changes only
that import line (`from memory_titan import X` -> `from titans.manager import X`).
"""

from titans.embedders import (
    BaseEmbedder,
    CachedEmbedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    SimpleAverageEmbedder,
    get_default_embedder,
)
from titans.manager.config import LongTermMemoryConfig
from titans.manager.core import ARCHITECTURES, MEMORY_TYPES, RANK_MODES, ArchitectureType, TitansManager
from titans.manager.long_term import LongTermMemory
from titans.manager.stores import VectorStore

__all__ = [
    "ARCHITECTURES",
    "MEMORY_TYPES",
    "RANK_MODES",
    "ArchitectureType",
    "BaseEmbedder",
    "CachedEmbedder",
    "HashingEmbedder",
    "LongTermMemory",
    "LongTermMemoryConfig",
    "SentenceTransformerEmbedder",
    "SimpleAverageEmbedder",
    "TitansManager",
    "VectorStore",
    "get_default_embedder",
]
