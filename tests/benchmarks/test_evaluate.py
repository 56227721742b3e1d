import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from benchmarks.evaluate import evaluate
from titans.training.checkpoint import load_model_weights

CONF = str(Path(__file__).resolve().parents[2] / "conf")
SMALL = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_attention_heads=2",
         "model.arch.num_key_value_heads=1", "model.arch.head_dim=16", "progress=false", "segment_len=64"]


def eval_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("eval", overrides=[f"paths.output_dir={tmp_path}", *SMALL, *overrides])
    return cfg


@pytest.mark.parametrize("name", ["niah", "ruler", "sniah", "babilong", "passkey", "hashhop", "dependency", "ppl"])
def test_every_benchmark_config_composes(tmp_path, name):
    cfg = eval_cfg(tmp_path, f"benchmark={name}")
    assert cfg.benchmark.name == name and len(cfg.benchmark.lengths) >= 1 and cfg.benchmark.samples >= 1


def test_evaluate_with_a_baseline_writes_everything(tmp_path):
    cfg = eval_cfg(tmp_path, "benchmark=passkey", "benchmark.lengths=[300]", "benchmark.samples=2",
                   "baselines=[swa]", "baseline_window=16")
    results = evaluate(cfg)
    assert list(results) == ["base", "swa16"] and results["base"]["table"]["passkey"][300] is not None
    assert (tmp_path / "config.yaml").exists() and OmegaConf.load(tmp_path / "config.yaml").benchmark.name == "passkey"
    assert set(json.loads((tmp_path / "summary.json").read_text())) == set(results)
    assert len((tmp_path / "base" / "samples.jsonl").read_text().splitlines()) == 2
    if len(results) > 1:
        assert "swa16" in results and (tmp_path / "comparison.md").exists()


@pytest.mark.parametrize("override, match", [
    ("benchmark.name=nope", "benchmark.name='nope'.*allowed"),
    ("baselines=[nope]", "baselines.*'nope'.*allowed"),
    ("checkpoint=/nonexistent.ckpt", "checkpoint=.*does not exist"),
    ("model_dir=/nonexistent", "model_dir=.*config.json"),
], ids=["unknown-benchmark", "unknown-baseline", "missing-checkpoint", "missing-model-dir"])
def test_bad_config_is_a_clear_error(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        evaluate(eval_cfg(tmp_path, "benchmark.lengths=[300]", "benchmark.samples=1", override))


def test_checkpoint_round_trip_and_mismatch(tmp_path, model):
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state["model.model.norm.weight"] += 1.0
    torch.save({"state_dict": state, "epoch": 0}, tmp_path / "ok.ckpt")
    fresh = type(model)(model.config)
    load_model_weights(fresh, tmp_path / "ok.ckpt", "checkpoint")
    torch.testing.assert_close(fresh.model.norm.weight, model.model.norm.weight + 1.0)
    bad = dict(state)
    bad["model.model.norm.weight"] = torch.zeros(7)
    bad["model.extra.memory.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError,
                       match=r"checkpoint=.*does not match.*unexpected 1 .*shapes differ: model.norm.weight \(7,\)"):
        load_model_weights(fresh, tmp_path / "bad.ckpt", "checkpoint")


def test_evaluate_a_saved_model_dir(tmp_path, model, tok):
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    results = evaluate(eval_cfg(tmp_path / "out", f"model_dir={tmp_path / 'saved'}", "benchmark.lengths=[300]",
                                "benchmark.samples=1"))
    assert list(results) == ["saved"]
    assert (tmp_path / "out" / "saved" / "passkey.png").stat().st_size > 0


def test_evaluate_a_saved_patched_model_dir_goes_through_titans_from_pretrained(tmp_path, tok, monkeypatch):
    from bench_helpers import tiny_qwen3

    from titans import patch

    model = patch.patch_qwen3(tiny_qwen3(tok), "mal", window=64, memory=dict(heads=2, depth=1, chunk_size=16))
    model.save_pretrained(tmp_path / "mal")
    calls = []
    real = patch.from_pretrained
    import titans

    assert titans.from_pretrained is real  # resolve the lazy export first, so undoing the patches restores it
    monkeypatch.setattr(patch, "from_pretrained", lambda path, **kw: calls.append(path) or real(path, **kw))
    monkeypatch.setattr(titans, "from_pretrained", patch.from_pretrained)
    results = evaluate(eval_cfg(tmp_path / "out", f"model_dir={tmp_path / 'mal'}", "benchmark.lengths=[300]",
                                "benchmark.samples=1"))
    assert calls == [str(tmp_path / "mal")] and list(results) == ["mal"]


def test_evaluate_ppl_compares_late_perplexity_across_models(tmp_path):
    results = evaluate(eval_cfg(tmp_path, "benchmark=ppl", "benchmark.lengths=[128]", "benchmark.samples=1",
                                "benchmark.first_bucket=32", "memory=none", "memory.window=32", "baselines=[base]"))
    assert list(results) == ["swa32", "base"]
    for s in results.values():
        assert s["late"][128] == s["table"]["64-128"][128] > 1
    table = (tmp_path / "comparison.md").read_text()
    assert "perplexity of the last position bucket" in table and "| swa32 |" in table and "| base |" in table


def test_evaluate_sniah_with_a_baseline_writes_the_table2_layout(tmp_path):
    results = evaluate(eval_cfg(tmp_path, "benchmark=sniah", "benchmark.lengths=[600]", "benchmark.samples=1",
                                "benchmark.columns=[PK]", "max_new_tokens=4", "baselines=[swa]",
                                "baseline_window=32"))
    assert list(results) == ["base", "swa32"]
    lines = (tmp_path / "table2.md").read_text().splitlines()
    assert lines[2] == "| model | PK 600 |" and lines[4].startswith("| base | ") and lines[5].startswith("| swa32 | ")
