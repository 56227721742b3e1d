"""titans: give a pretrained Qwen3 a Titans neural long-term memory.

The neural memory (`titans.memory`) imports torch and einops only; the Hugging Face parts are
imported lazily so `import titans` stays cheap.
"""

from titans.memory import MemoryConfig, MemoryState, NeuralMemory

__all__ = ["MemoryConfig", "MemoryState", "NeuralMemory"]
__version__ = "0.1.0"
