"""Nothing we load runs code: every public load path gets a file holding a pickled object whose unpickling
creates a marker file, and must refuse it with an error while the marker never appears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears iff a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_payload(path: Path, marker: Path) -> Path:
    """A Lightning-style checkpoint with real-looking weights and the payload among its hyper-parameters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model.lm_head.weight": torch.zeros(2, 2)}, "global_step": 1,
                "hyper_parameters": {"x": Payload(marker)}}, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The test can fail: an unrestricted torch.load runs the payload."""
    marker = tmp_path / "ran"
    torch.load(write_payload(tmp_path / "a.ckpt", marker), weights_only=False)
    assert marker.exists()


TINY_MODEL = ["model.arch.hidden_size=64", "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2",
              "model.arch.num_key_value_heads=1", "model.arch.head_dim=32", "model.arch.intermediate_size=128"]


def _train(tmp_path, key, path):
    from tests.training.conftest import TINY, compose_cfg
    from titans.training.run import train

    train(compose_cfg([*TINY, f"paths.output_dir={tmp_path / 'out'}", "trainer.max_steps=1", f"{key}={path}"]))


def _evaluate(tmp_path, path):
    from benchmarks.evaluate import evaluate
    from tests.training.conftest import compose_cfg

    evaluate(compose_cfg([*TINY_MODEL, f"checkpoint={path}", f"paths.output_dir={tmp_path / 'out'}",
                          "benchmark.lengths=[256]", "benchmark.samples=1", "progress=false"], config_name="eval"))


def _from_pretrained(tmp_path, path):
    import titans

    d = tmp_path / "model_dir"
    d.mkdir()
    path.rename(d / "pytorch_model.bin")
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
              "intermediate_size": 128, "vocab_size": 32, "titans": {"variant": "swa", "window": 8}}
    (d / "config.json").write_text(json.dumps(config))
    titans.from_pretrained(d)


def _load_memory(tmp_path, path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    import titans

    base = Qwen3ForCausalLM(Qwen3Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, head_dim=32, intermediate_size=128, vocab_size=32))
    d = tmp_path / "mem"
    d.mkdir()
    path.rename(d / "titans_memory.safetensors")
    titans.load_memory(base, d)


def _load_cache(tmp_path, path):
    from titans.cache import load_cache

    load_cache(path)


def _memory_state(tmp_path, path):
    from titans.memory import MemoryState

    MemoryState.load(path)


def _manager(tmp_path, path):
    from titans.embedders import HashingEmbedder
    from titans.manager import TitansManager

    TitansManager(HashingEmbedder(dim=32), vector_dim=32).load(path)


LOADERS = {
    "evaluate_checkpoint": _evaluate,
    "ckpt_path": lambda tmp_path, path: _train(tmp_path, "ckpt_path", path),
    "init_from": lambda tmp_path, path: _train(tmp_path, "init_from", path),
    "from_pretrained": _from_pretrained,
    "load_memory": _load_memory,
    "load_cache": _load_cache,
    "MemoryState.load": _memory_state,
    "TitansManager.load": _manager,
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_no_loader_runs_a_pickled_payload(tmp_path, loader):
    marker = tmp_path / "ran"
    path = write_payload(tmp_path / "evil.ckpt", marker)
    with pytest.raises((ValueError, OSError)) as e:
        LOADERS[loader](tmp_path, path)
    assert not marker.exists(), f"{loader} ran code from the file"
    assert str(e.value)  # a message, not a bare exception


@pytest.mark.parametrize("key", ["ckpt_path", "init_from"])
def test_training_loaders_say_why_they_refuse(tmp_path, key):
    path = write_payload(tmp_path / "evil.ckpt", tmp_path / "ran")
    with pytest.raises(ValueError, match=rf"{key}=.*pickled Python objects.*weights-only"):
        _train(tmp_path, key, path)


def test_one_checkpoint_loader_in_the_code_base():
    """torch.load is called in one place only (titans.training.checkpoint.read_checkpoint, weights-only), so a
    new load path cannot bypass it; pickle / torch.load with weights_only=False appear nowhere."""
    import ast

    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("titans", "benchmarks", "experiments", "data_gen") for p in (root / d).rglob("*.py")]
    files += list(root.glob("*.py"))
    calls = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "pickle"):
                calls.append(str(path.relative_to(root)))
            if isinstance(node, ast.Import | ast.ImportFrom) and any(a.name in ("pickle", "dill", "cloudpickle")
                                                                     for a in node.names):
                calls.append(f"{path.relative_to(root)} imports pickle")
    # checkpoint.py imports pickle for its UnpicklingError only
    assert sorted(calls) == ["titans/training/checkpoint.py", "titans/training/checkpoint.py imports pickle"], calls
