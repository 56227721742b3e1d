"""Document memory: MemoryTitan's `TitansManager` API on the real Titans neural memory.

`from titans.manager import TitansManager, LongTermMemoryConfig`; see docs/manager.md.
"""

from titans.manager.config import LongTermMemoryConfig
from titans.manager.core import ARCHITECTURES, MEMORY_TYPES, RANK_MODES, TitansManager
from titans.manager.long_term import LongTermMemory
from titans.manager.stores import VectorStore

__all__ = [
    "ARCHITECTURES",
    "MEMORY_TYPES",
    "RANK_MODES",
    "LongTermMemory",
    "LongTermMemoryConfig",
    "TitansManager",
    "VectorStore",
]
