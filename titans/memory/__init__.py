"""The Titans neural long-term memory (Behrouz, Zhong, Mirrokni 2024, arXiv 2501.00663, §3 and §4.4).

Pure torch + einops: nothing here imports transformers, Lightning, Hydra or W&B.
"""

from titans.memory.config import MemoryConfig
from titans.memory.mlp import MemoryMLP
from titans.memory.neural_memory import NeuralMemory, query_error_cosine
from titans.memory.state import MemoryState

__all__ = ["MemoryConfig", "MemoryMLP", "MemoryState", "NeuralMemory", "query_error_cosine"]
