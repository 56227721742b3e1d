import json

import pytest
import torch

from titans.training.curriculum import run_curriculum
from titans.training.run import train
from titans.training.stages import apply_stage


def test_resume_continues_with_the_same_losses(tiny_cfg, tmp_path):
    """N+k steps in one run == N steps, then resume from last.ckpt for k more (weights, optimizer,
    scheduler and data position restored)."""
    full = train(tiny_cfg("trainer.max_steps=4", f"paths.output_dir={tmp_path / 'full'}"))
    # an interrupted run: same schedule (total_steps=4), stopped after 2 steps
    first = train(tiny_cfg("trainer.max_steps=2", "scheduler.total_steps=4", f"paths.output_dir={tmp_path / 'a'}"))
    resumed = train(tiny_cfg("trainer.max_steps=4", f"paths.output_dir={tmp_path / 'b'}",
                             f"ckpt_path={first['last_ckpt']}"))
    assert len(full["train/losses"]) == 4 and len(resumed["train/losses"]) == 2
    torch.testing.assert_close(first["train/losses"] + resumed["train/losses"], full["train/losses"], rtol=1e-5,
                               atol=1e-6)
    assert resumed["global_step"] == 4
    # the checkpoint loads under torch's weights_only default
    ckpt = torch.load(first["last_ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["titans"]["batches_seen"] == 2


def test_missing_checkpoint_names_the_key_and_the_fix(tiny_cfg, tmp_path):
    for key in ("ckpt_path", "init_from"):
        with pytest.raises(ValueError, match=rf"{key}=.*does not exist.*Point {key} at an existing checkpoint"):
            train(tiny_cfg(f"{key}={tmp_path / 'nope' / 'last.ckpt'}"))


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def test_curriculum_stage_two_starts_from_stage_one(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("curriculum=tiny", "trainer.max_steps=1")
    # two short stages on the tiny sizes, the second with another learning rate and bptt window
    cfg.curriculum.stages = [
        {"name": "one", "trainer": {"max_steps": 2}, "optimizer": {"lr": 1e-2}},
        {"name": "two", "trainer": {"max_steps": 1}, "bptt": {"bptt_window": 2}, "optimizer": {"lr": 1e-3}},
    ]
    seen = {}
    import titans.training.run as run_mod

    real = run_mod.build_model

    def spy(*args, **kwargs):  # the weights each stage starts from, right after init_from is loaded
        model, tok = real(*args, **kwargs)
        seen[kwargs.get("init_from")] = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
        return model, tok

    monkeypatch.setattr(run_mod, "build_model", spy)
    results = run_curriculum(cfg)
    assert [r["stage"] for r in results] == ["one", "two"]
    assert results[0]["init_from"] is None and results[1]["init_from"] == results[0]["last_ckpt"]
    end_of_one = _weights(results[0]["last_ckpt"])
    start_of_two = seen[results[0]["last_ckpt"]]
    assert end_of_one.keys() == start_of_two.keys()
    for k, v in end_of_one.items():
        assert torch.equal(v, start_of_two[k]), k
    fresh = seen[None]
    assert any(not torch.equal(fresh[k], v) for k, v in end_of_one.items())  # stage one did train
    summary = json.loads((tmp_path / "curriculum.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["one", "two"]
    assert (tmp_path / "2_two" / "checkpoints" / "last.ckpt").is_file()


def test_stage_errors(tiny_cfg):
    cfg = tiny_cfg("curriculum=tiny")
    with pytest.raises(ValueError, match=r"stage='nine' is not a stage.*memory_short"):
        apply_stage(cfg, "nine")
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.curriculum.stages[0].memory = {"window": 4}
    with pytest.raises(ValueError, match=r"curriculum.stages\[0\] has unknown key\(s\) \['memory'\]"):
        apply_stage(cfg, 0)
    with pytest.raises(ValueError, match="curriculum.stages is empty"):
        run_curriculum(tiny_cfg())
    merged = apply_stage(tiny_cfg("curriculum=tiny"), "memory_long")
    assert merged.bptt.bptt_window == 4 and merged.data.seq_len == 1024 and merged.freeze == "memory"
