"""Checkpoints carry the model and memory config; loading one into another architecture is refused (naming
both values) unless `allow_arch_mismatch=true` asks for the transfer."""

import pytest
import torch

from tests.training.conftest import compose_cfg
from titans.training.builders import build_model
from titans.training.checkpoint import model_arch
from titans.training.run import train

MAG = ["memory=mag", "memory.memory.heads=2", "memory.window=32"]
EVAL_MODEL = ["model.arch.hidden_size=64", "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1",
              "model.arch.head_dim=32", "model.arch.intermediate_size=128"]


@pytest.fixture(scope="module")
def mag_ckpt(tmp_path_factory):
    from tests.training.conftest import TINY

    out = tmp_path_factory.mktemp("mag")
    torch.set_num_threads(1)
    metrics = train(compose_cfg([*TINY, *MAG, "trainer.max_steps=1", f"paths.output_dir={out}"]))
    return metrics["last_ckpt"]


def test_checkpoint_records_the_architecture(mag_ckpt):
    arch = torch.load(mag_ckpt, map_location="cpu", weights_only=True)["titans"]["arch"]
    assert arch["memory"]["variant"] == "mag" and arch["memory"]["window"] == 32
    assert arch["memory"]["memory"]["heads"] == 2 and arch["memory"]["memory"]["chunk_size"] == 16
    assert arch["model"]["hidden_size"] == 64 and arch["model"]["num_hidden_layers"] == 2
    assert "freeze" not in arch["memory"]  # what trains may change between stages; what the model is may not


@pytest.mark.parametrize("key, overrides, words", [
    ("init_from", ["memory=mal", "memory.memory.heads=2", "memory.window=32"], ["variant: checkpoint 'mag'",
                                                                                 "this run 'mal'"]),
    ("ckpt_path", [*MAG, "memory.window=48"], ["window: checkpoint 32 vs this run 48"]),
    ("init_from", [*MAG, "memory.memory.chunk_size=8"], ["chunk_size: checkpoint 16 vs this run 8"]),
], ids=["init_from-variant", "ckpt_path-window", "init_from-chunk"])
def test_training_refuses_another_architecture(tiny_cfg, mag_ckpt, key, overrides, words):
    with pytest.raises(ValueError, match=rf"{key}=.*another architecture.*allow_arch_mismatch=true") as e:
        train(tiny_cfg(*overrides, "trainer.max_steps=2", f"{key}={mag_ckpt}"))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_evaluate_refuses_another_architecture(tmp_path, mag_ckpt):
    from benchmarks.evaluate import evaluate

    cfg = compose_cfg([*EVAL_MODEL, "memory=mal", "memory.memory.heads=2", "memory.window=32",
                       f"checkpoint={mag_ckpt}", f"paths.output_dir={tmp_path}", "benchmark.lengths=[256]",
                       "benchmark.samples=1", "progress=false"], config_name="eval")
    with pytest.raises(ValueError, match=r"checkpoint=.*variant: checkpoint 'mag' vs this run 'mal'"):
        evaluate(cfg)


def test_allow_arch_mismatch_transfers_mag_weights_into_mal(tiny_cfg, mag_ckpt):
    cfg = tiny_cfg("memory=mal", "memory.memory.heads=2", "memory.window=32", "trainer.max_steps=1",
                   f"init_from={mag_ckpt}", "allow_arch_mismatch=true")
    model, _ = build_model(cfg.model, cfg.memory, init_from=mag_ckpt, allow_arch_mismatch=True)
    saved = torch.load(mag_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():  # MAG and MAL have the same weight names: all copied
        torch.testing.assert_close(v, saved[f"model.{k}"], rtol=0, atol=0)
    assert model_arch(model)["memory"]["variant"] == "mal"
    assert train(cfg)["global_step"] == 1


@pytest.mark.parametrize("memory, freeze, want", [
    (MAG, None, "memory"), (MAG, "none", "none"), (MAG, "lora", "lora"),
], ids=["default", "none", "lora"])
def test_saved_config_says_what_freeze_was_applied(tiny_cfg, memory, freeze, want):
    """Freezing happens in titans.patch only, and model.config.titans["freeze"] tells the truth."""
    from titans.patch import unwrap

    cfg = tiny_cfg(*memory)
    model, _ = build_model(cfg.model, cfg.memory, freeze=freeze)
    assert unwrap(model).config.titans["freeze"] == want
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if want == "memory":
        assert trainable and all(".memory" in n or "memory_gate" in n or "persistent" in n for n in trainable)
    if want == "lora":
        assert any("lora_" in n for n in trainable)


def test_a_field_added_after_the_checkpoint_counts_as_its_default():
    """A checkpoint written before a config option existed loads when the run leaves it at its default,
    and is refused when the run sets it to something else."""
    from titans.training.checkpoint import arch_differences

    built = {"memory": {"variant": "mag", "memory": {"heads": 4, "nonfinite": "error", "write_threshold": 0.0}}}
    old = {"memory": {"variant": "mag", "memory": {"heads": 4}}}
    assert arch_differences(old, built) == []
    built["memory"]["memory"]["write_threshold"] = 0.5
    assert arch_differences(old, built) == ["memory.memory.write_threshold: checkpoint None vs this run 0.5"]
