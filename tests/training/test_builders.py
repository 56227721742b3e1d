import pytest
import torch
from omegaconf import OmegaConf

from titans.training.builders import build_model, memory_options, resolve_dtype

TINY = {
    "name": "qwen3_tiny", "pretrained": None, "tokenizer": "byte", "dtype": "float32", "seed": 0,
    "arch": {"vocab_size": None, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128,
             "max_position_embeddings": 1 << 20, "tie_word_embeddings": True},
}


def test_tiny_model_is_seeded_and_sized_by_tokenizer():
    m1, tok = build_model(OmegaConf.create(TINY), {"variant": None, "window": None})
    m2, _ = build_model(TINY, None)
    assert m1.config.vocab_size == len(tok) == 259
    assert m1.config.max_position_embeddings == 1 << 20
    for (n1, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1
    other, _ = build_model({**TINY, "seed": 1}, None)
    assert not torch.equal(other.model.embed_tokens.weight, m1.model.embed_tokens.weight)
    logits = m1(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 259)


def test_memory_options_none_window_and_variant():
    assert memory_options({"variant": None, "window": None}) == (None, {})
    assert memory_options({"variant": None, "window": 32}) == ("swa", {"window": 32})
    variant, opts = memory_options({"name": "mag", "variant": "mag", "window": 64, "layers": None,
                                    "memory": {"heads": 2}})
    assert variant == "mag" and opts == {"window": 64, "memory": {"heads": 2}}


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"variant": "mog"}, ["memory.variant", "'mog'", "mac"]),
        ({"variant": None, "window": -3}, ["memory.window", "-3"]),
        ({"variant": None, "memory": {"heads": 2}}, ["memory.variant=null", "memory"]),
    ],
    ids=["unknown-variant", "bad-window", "options-without-variant"],
)
def test_memory_options_errors_name_the_key(cfg, words):
    with pytest.raises(ValueError) as e:
        memory_options(cfg)
    for w in words:
        assert w in str(e.value)


def test_model_cfg_errors():
    with pytest.raises(ValueError, match="unknown key.*'hiden'"):
        build_model({**TINY, "hiden": 3}, None)
    with pytest.raises(ValueError, match="model.dtype='f8'"):
        resolve_dtype("f8")
    with pytest.raises(ValueError, match="model.arch"):
        build_model({**TINY, "arch": {**TINY["arch"], "hidden_size": "big"}}, None)
    with pytest.raises(ValueError, match="freeze='memory'"):
        build_model(TINY, None, freeze="memory")


def _mark_model(model):
    """A `memory.memory_impl` for the test below: records that it ran, after patching."""
    model.memory_impl_saw = type(model.model.layers[0]).__name__
    return model


@pytest.mark.parametrize(
    "impl, variant, words",
    [
        ("nodots", "mag", ["memory.memory_impl='nodots'", "dotted path"]),
        ("titans.no_such_module.fn", "mag", ["memory.memory_impl='titans.no_such_module.fn'", "cannot be imported"]),
        ("titans.training.builders.MODEL_KEYS", "mag", ["not a function"]),
        ("tests.training.test_builders._mark_model", None, ["memory.memory_impl", "memory.variant=None"]),
    ],
    ids=["not-dotted", "missing-module", "not-callable", "without-memory"],
)
def test_memory_impl_errors_name_the_key(impl, variant, words):
    with pytest.raises(ValueError) as e:
        build_model(TINY, {"variant": variant, "window": 8, "memory_impl": impl})
    for w in words:
        assert w in str(e.value)


def test_memory_impl_runs_after_patching():
    model, _ = build_model(TINY, {"variant": "mag", "window": 8, "memory": {"heads": 2, "depth": 1, "chunk_size": 4},
                                  "memory_impl": f"{__name__}._mark_model"})
    assert model.memory_impl_saw == "MAGDecoderLayer"
