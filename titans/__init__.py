"""titans: give a pretrained Qwen3 a Titans neural long-term memory.

The neural memory (`titans.memory`) imports torch and einops only; the Hugging Face parts are
imported lazily so `import titans` stays cheap.
"""

from titans.memory import MemoryConfig, MemoryState, NeuralMemory

# name -> module, imported on first access (keeps `import titans` free of transformers)
_LAZY = {
    "patch_qwen3": "titans.patch",
    "from_pretrained": "titans.patch",
    "save_memory": "titans.patch",
    "load_memory": "titans.patch",
    "collect_diagnostics": "titans.patch",
    "count_trainable_parameters": "titans.patch",
    "TitansConfig": "titans.config",
    "TitansCache": "titans.cache",
    "detach_cache": "titans.cache",
    "stream": "titans.streaming",
}

__all__ = ["MemoryConfig", "MemoryState", "NeuralMemory", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'titans' has no attribute {name!r}")
