"""Strategy factories that need Python objects a YAML file cannot name (e.g. the FSDP wrap policy)."""

from __future__ import annotations


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = True,
                  cpu_offload: bool = False, **kwargs):
    """Lightning `FSDPStrategy` wrapping each Qwen3 decoder layer (patched layers subclass it) as one unit."""
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    layers = {Qwen3DecoderLayer}
    return FSDPStrategy(sharding_strategy=sharding_strategy, auto_wrap_policy=layers,
                        activation_checkpointing_policy=layers if activation_checkpointing else None,
                        cpu_offload=cpu_offload, **kwargs)
