"""Helpers of the patch tests: a tiny Qwen3 config and a patched-model builder (imported by name,
not through `conftest`, which is ambiguous across test directories)."""

from transformers import Qwen3Config

from titans.patch import patch_qwen3

VOCAB = 300
# small chunks so split points fall inside and across chunks; max_lr 0.1 keeps the random memory finite
MEMORY = dict(heads=2, depth=2, chunk_size=4, max_lr=0.1)


def tiny_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=False,
    )


def patched(base, variant="mag", **kw):
    """A patched model where the memory matters (identity_init=False) and the window/segment is short."""
    opts = dict(window=8, memory=dict(MEMORY), identity_init=False, num_persistent=2)
    if variant == "swa":
        del opts["memory"]
    if variant == "mac":
        opts.update(window=None, segment_len=8, num_longterm=4)
    opts.update(kw)
    return patch_qwen3(base, variant, **opts).eval()
