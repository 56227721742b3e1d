"""evaluate.py is reproducible (it seeds before building the model, so a rerun reuses its finished samples),
evaluates the checkpoint's weights themselves, and refuses settings it would otherwise replace silently."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.evaluate import evaluate
from tests.benchmarks.test_evaluate import eval_cfg

ROOT = Path(__file__).resolve().parents[2]
MAG = ["memory=mag", "memory.memory.heads=2", "memory.memory.chunk_size=8", "memory.window=16",
       "benchmark=passkey", "benchmark.lengths=[300]", "benchmark.samples=2"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_rerun_builds_the_same_model_and_reuses_its_samples(tmp_path):
    """Without a checkpoint the memory's init comes from the RNG: whatever state it is in before evaluate(),
    the same config gives the same weights, the same fingerprint, and the second run appends nothing."""
    torch.manual_seed(123)
    evaluate(eval_cfg(tmp_path, *MAG))
    (samples,) = tmp_path.glob("*/samples.jsonl")
    first = _records(samples)
    torch.manual_seed(456)
    evaluate(eval_cfg(tmp_path, *MAG))
    second = _records(samples)
    assert len(first) == 2 and second == first  # reused, not recomputed and appended
    assert len({json.dumps(r["fingerprint"], sort_keys=True) for r in second}) == 1


@pytest.mark.slow
def test_two_processes_give_the_same_fingerprint(tmp_path):
    from tests.benchmarks.test_evaluate import SMALL

    cmd = [sys.executable, "evaluate.py", *SMALL, *MAG, f"paths.output_dir={tmp_path}"]
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    (samples,) = tmp_path.glob("*/samples.jsonl")
    records = _records(samples)
    assert len(records) == 2 and len({json.dumps(r["fingerprint"], sort_keys=True) for r in records}) == 1


def test_evaluating_a_checkpoint_uses_its_weights(tmp_path, monkeypatch):
    """Known answer: the model evaluate() runs gives the logits of a direct load of the checkpoint's weights
    (a loader that filled a copy, or nothing, would give the fresh model's)."""
    import benchmarks.runner
    from titans.training.builders import build_model
    from titans.training.checkpoint import model_arch

    cfg = eval_cfg(tmp_path, *MAG)
    model, _ = build_model(cfg.model, cfg.memory)
    gen = torch.Generator().manual_seed(7)
    weights = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}, "titans": {"arch": model_arch(model)}},
               tmp_path / "w.ckpt")
    ids = torch.randint(0, 200, (1, 40), generator=gen)
    seen = {}

    def fake_run_suite(model, tokenizer, suite, **kwargs):
        with torch.no_grad():
            seen["logits"] = model(ids).logits
        return {"table": {}, "lengths": []}

    monkeypatch.setattr(benchmarks.runner, "run_suite", fake_run_suite)
    evaluate(eval_cfg(tmp_path / "e", *MAG, f"checkpoint={tmp_path / 'w.ckpt'}"))
    direct, _ = build_model(cfg.model, cfg.memory)
    direct.load_state_dict(weights)
    with torch.no_grad():
        want, fresh = direct.eval()(ids).logits, model.eval()(ids).logits
    torch.testing.assert_close(seen["logits"], want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen["logits"], fresh, atol=1e-3)


@pytest.mark.parametrize("value", [0, -4, "512"], ids=["zero", "negative", "string"])
def test_segment_len_must_be_a_positive_int(tmp_path, value):
    with pytest.raises(ValueError, match=rf"segment_len={value!r} is not allowed; allowed: an int > 0"):
        evaluate(eval_cfg(tmp_path, *MAG, f"segment_len={value!r}" if isinstance(value, str) else
                          f"segment_len={value}"))


@pytest.mark.parametrize("value", ["1", "'yes'"], ids=["int", "string"])
def test_malloc_keep_freed_must_be_a_bool(tmp_path, value):
    with pytest.raises(ValueError, match=r"malloc_keep_freed=.* is not allowed; allowed: true .* or false"):
        evaluate(eval_cfg(tmp_path, *MAG, f"malloc_keep_freed={value}"))
