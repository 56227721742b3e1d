"""Patched Qwen3 decoder layers: MAG, MAL, MAC (Titans §4) and the sliding-window baseline SWA."""

from titans.variants.common import MemoryGate, TitansDecoderLayer
from titans.variants.mac import MACDecoderLayer
from titans.variants.mag import MAGDecoderLayer
from titans.variants.mal import MALDecoderLayer
from titans.variants.swa import SWADecoderLayer

LAYER_CLASSES: dict[str, type[TitansDecoderLayer]] = {
    "mac": MACDecoderLayer,
    "mag": MAGDecoderLayer,
    "mal": MALDecoderLayer,
    "swa": SWADecoderLayer,
}

__all__ = [
    "LAYER_CLASSES",
    "MACDecoderLayer",
    "MAGDecoderLayer",
    "MALDecoderLayer",
    "MemoryGate",
    "SWADecoderLayer",
    "TitansDecoderLayer",
]
