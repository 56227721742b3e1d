"""Helpers shared by the benchmark tests (a unique module name: every tests/ folder has a conftest)."""

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def tiny_qwen3(tokenizer, seed: int = 0, **overrides) -> Qwen3ForCausalLM:
    """A 2-layer random Qwen3 over the byte tokenizer (~0.2M parameters), full attention."""
    cfg = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1 << 16,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(**cfg)).eval()
