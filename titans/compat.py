"""The one place that knows which Hugging Face transformers release is installed.

transformers 5.24 renamed the cache argument of every model, decoder layer and attention forward from
`past_key_values` to `cache` (the old name is accepted with a FutureWarning until 5.40; outputs keep a
`past_key_values` property). A patched model must pass its `TitansCache` under the name the installed
release reads: under the old name, 5.24's `Qwen3Model.forward` would see `cache=None`, drop the
`TitansCache` and build a plain `DynamicCache`, and the memory state would be lost between segments.

    model(ids, **cache_kwargs(cache), use_cache=True)   # whichever release is installed
    cache = output_cache(out)
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

__all__ = ["CACHE_KWARG", "cache_kwargs", "enable_activation_checkpointing", "output_cache", "take_cache"]

#: the keyword the installed transformers' Qwen3 forwards read the cache from
CACHE_KWARG: str = "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{"cache": cache}` or `{"past_key_values": cache}`, for the installed release."""
    return {CACHE_KWARG: cache}


def output_cache(out: Any) -> Any:
    """The cache a model output returns (`out.cache` from 5.24 on, `out.past_key_values` before)."""
    return getattr(out, CACHE_KWARG)


def take_cache(cache: Any, past_key_values: Any, where: str) -> Any:
    """The one cache of a forward that takes it as `cache` or `past_key_values`.

    Raises `TypeError` naming both when two different caches are passed."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise TypeError(f"{where}: got both `cache` and `past_key_values`; pass one, as `cache` "
                        f"(transformers >= 5.24) or `past_key_values` (earlier releases).")
    return cache if cache is not None else past_key_values


def enable_activation_checkpointing(model: Any) -> None:
    """Hugging Face activation checkpointing, non-reentrant: `activation_checkpointing_enable` from 5.24 on
    (`gradient_checkpointing_enable` is its deprecated alias there), `gradient_checkpointing_enable` before."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
