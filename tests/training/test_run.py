import json
import logging
import math
from pathlib import Path

import pytest
import torch

from titans.training.callbacks import DiagnosticsCallback
from titans.training.run import train

MEM = ["memory.memory.heads=2"]


def test_train_none_returns_and_writes_metrics(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("trainer.max_steps=2"))
    assert metrics["global_step"] == 2 and len(metrics["train/losses"]) == 2
    assert all(math.isfinite(x) for x in metrics["train/losses"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["train/losses"] == metrics["train/losses"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))


@pytest.mark.parametrize("memory, extra", [
    ("none", ["memory.window=32"]),
    ("mag", [*MEM, "memory.window=32"]),
    ("mal", [*MEM, "memory.window=32"]),
    ("mac", [*MEM, "memory.segment_len=32", "memory.num_longterm=8"]),
], ids=["swa", "mag", "mal", "mac"])
def test_short_run_per_variant_trains_the_memory(tiny_cfg, memory, extra):
    metrics = train(tiny_cfg(f"memory={memory}", *extra, "trainer.max_steps=2", "bptt.bptt_window=2",
                             "final_validation=true"))
    assert metrics["global_step"] == 2 and metrics["skipped_steps"] == 0
    assert all(math.isfinite(x) for x in metrics["train/losses"])
    assert 0.0 <= metrics["val/answer_acc"] <= 1.0 and math.isfinite(metrics["val/loss"])
    ckpt = torch.load(metrics["last_ckpt"], map_location="cpu", weights_only=True)
    names = list(ckpt["state_dict"])
    if memory != "none":  # the patch's parameters are saved, and only they had optimizer state
        assert any(".memory." in n or "memory" in n.split(".")[-3:] for n in names)
        n_trained = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
        assert 0 < n_trained < len(names)


def test_alignment_term_is_logged(tiny_cfg):
    metrics = train(tiny_cfg("memory=mag", *MEM, "memory.window=32", "bptt.align_reg=0.1", "trainer.max_steps=1"))
    cos = metrics["train/align_cos"]
    assert -1.0 <= cos <= 1.0 and cos != 0.0
    assert metrics["train/align_loss"] == pytest.approx(-0.1 * cos)  # every segment wrote: weight 1
    assert math.isfinite(metrics["train/losses"][0])


def test_a_run_that_stays_non_finite_stops_with_a_clear_error(tiny_cfg, monkeypatch):
    """Skipped steps do not count toward max_steps: without the limit a diverged run would never end."""
    import titans.training.run as run_mod

    real = run_mod.build_model

    def poisoned(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        model.lm_head.register_forward_hook(lambda _m, _inp, out: out * float("nan"))
        return model, tok

    monkeypatch.setattr(run_mod, "build_model", poisoned)
    with pytest.raises(RuntimeError, match=r"3 non-finite steps in a row.*max_consecutive_skips=2"):
        train(tiny_cfg("trainer.max_steps=5", "bptt.max_consecutive_skips=2"))
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        train(tiny_cfg("bptt.max_consecutive_skips=-1"))


def test_non_finite_loss_skips_the_step_and_is_logged(tiny_cfg, monkeypatch, caplog):
    """Batch 2 of 3 gets NaN logits: its step is skipped (weights unchanged), training goes on."""
    import titans.training.run as run_mod

    real = run_mod.build_model
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        model, tok = real(*args, **kwargs)

        def hook(_m, _inp, out):
            return out * float("nan") if calls["batch"] == 1 else out

        model.lm_head.register_forward_hook(hook)
        return model, tok

    monkeypatch.setattr(run_mod, "build_model", poisoned)

    snapshots = []

    class Spy(run_mod.pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            calls["batch"] = batch_idx
            snapshots.append(pl_module.model.model.embed_tokens.weight.detach().clone())

    with caplog.at_level(logging.WARNING):
        metrics = train(tiny_cfg("trainer.max_steps=2"), extra_callbacks=[Spy()])
    losses = metrics["train/losses"]
    assert len(losses) == 3 and math.isnan(losses[1]) and math.isfinite(losses[2])
    assert metrics["skipped_steps"] == 1 and metrics["global_step"] == 2
    assert not torch.equal(snapshots[0], snapshots[1])  # step 1 updated the weights
    assert torch.equal(snapshots[1], snapshots[2])  # the skipped step did not
    assert "non-finite loss" in caplog.text


def test_wandb_offline_run_logs_config_losses_and_diagnostics(tiny_cfg, tmp_path, monkeypatch):
    from wandb_records import read_wandb_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # mode=auto must pick offline by itself (no key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    train(tiny_cfg("logger=wandb", "callbacks=default", "callbacks.diagnostics.every_n_steps=1", "memory=mag", *MEM,
                   "memory.window=32", "trainer.max_steps=2"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_wandb_run(runs[0])
    assert run["config"]["memory"]["variant"] == "mag" and run["config"]["bptt"]["segment_len"] == 160
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    keys = set().union(*run["history"])
    assert {"train/lr", "train/tokens_per_s", "train/grad_norm"} <= keys
    for name in ("gate_mean", "surprise_norm", "lr_mean", "momentum_decay_mean", "forget_mean", "memory_weight_norm",
                 "query_grad_cos"):
        assert f"diag/layer0/{name}" in keys, name


def test_stuck_gate_warns_once_and_counts(caplog):
    values = {"layer0/gate_mean": 0.001, "layer1/gate_mean": 0.5, "layer1/gate_std": 0.0, "layer2/gate_mean": 0.999}
    cb = DiagnosticsCallback(every_n_steps=1, collector=lambda model: values)
    assert sorted(cb.stuck_gates(cb.collect(None))) == ["layer0/gate_mean", "layer2/gate_mean"]

    class Trainer:
        global_step = 5

    class Module:
        model = None

        def __init__(self):
            self.logged = {}

        def log_dict(self, d, **kw):
            self.logged.update(d)

    module = Module()
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long)}
    with caplog.at_level(logging.WARNING):
        cb.on_train_batch_end(Trainer(), module, None, batch, 0)
        cb.on_train_batch_end(Trainer(), module, None, batch, 1)
    assert caplog.text.count("stuck closed") == 1 and caplog.text.count("stuck open") == 1
    assert module.logged["diag/stuck_gates"] == 2.0 and module.logged["diag/layer1/gate_mean"] == 0.5


@pytest.mark.parametrize("overrides, words", [
    (["memory=mac", "memory.window=64", "memory.segment_len=32"], ["memory.window=64", "memory.segment_len=32"]),
    (["memory=mac", "memory.segment_len=48"], ["bptt.segment_len=160", "memory.segment_len=48"]),
    (["bptt.strict_segments=true", "bptt.segment_len=96"], ["data.seq_len=320", "bptt.segment_len=96"]),
    (["data.seq_len=200"], ["data.train.lengths", "data.seq_len=200"]),
    (["bptt.bptt_window=0"], ["bptt.bptt_window=0"]),
    (["freeze=memory"], ["freeze='memory'", "memory=mac|mag|mal"]),
    (["trainer.max_steps=0"], ["trainer.max_steps"]),
    (["malloc_keep_freed=1"], ["malloc_keep_freed=1", "true", "false"]),
], ids=["mac-window", "mac-segment", "strict", "seq-len", "bptt-window", "freeze", "max-steps", "malloc"])
def test_bad_config_errors_name_the_key(tiny_cfg, overrides, words):
    with pytest.raises(ValueError) as e:
        train(tiny_cfg(*overrides))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.slow
def test_train_py_entry_point(tmp_path):
    """`python train.py ...` through @hydra.main (a subprocess: the real command line)."""
    import subprocess
    import sys

    from tests.training.conftest import TINY

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "train.py", *TINY, "trainer.max_steps=1", "cpu_threads=1",
                           f"paths.output_dir={out}"], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 1


def test_the_allocator_setting_leaves_the_trained_weights_bit_identical(tmp_path):
    """`malloc_keep_freed` changes where tensors live, not what is computed: two trainings in fresh processes (the
    allocator is process-wide), with and without it, end with the same bytes in every tensor."""
    import subprocess
    import sys

    from tests.training.conftest import TINY
    from titans.training.checkpoint import read_checkpoint

    root = Path(__file__).resolve().parents[2]
    states = []
    for flag in ("true", "false"):
        out = tmp_path / flag
        proc = subprocess.run([sys.executable, "train.py", *TINY, "trainer.max_steps=2", "cpu_threads=1", "memory=mag",
                               *MEM, "memory.window=32", f"malloc_keep_freed={flag}", f"paths.output_dir={out}"],
                              cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        last = json.loads((out / "metrics.json").read_text())["last_ckpt"]
        states.append(read_checkpoint(Path(last), "last_ckpt")["state_dict"])
    assert states[0].keys() == states[1].keys() and len(states[0]) > 10
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


def test_run_evaluate_scores_a_trained_checkpoint(tiny_cfg, tmp_path):
    """train(cfg) -> last.ckpt -> benchmarks.evaluate(eval cfg) through the shared model/memory/paths groups."""
    from benchmarks.evaluate import evaluate
    from tests.training.conftest import compose_cfg

    trained = train(tiny_cfg("trainer.max_steps=1", "memory=mag", *MEM, f"paths.output_dir={tmp_path / 't'}"))
    cfg = compose_cfg(["model.arch.hidden_size=64", "model.arch.num_attention_heads=2",
                       "model.arch.num_key_value_heads=1", "model.arch.head_dim=32", "model.arch.intermediate_size=128",
                       "memory=mag", *MEM, f"checkpoint={trained['last_ckpt']}", f"paths.output_dir={tmp_path / 'e'}",
                       "benchmark.lengths=[320]", "benchmark.samples=1", "progress=false"], config_name="eval")
    result = evaluate(cfg)
    (summary,) = result.values()
    assert summary["suite"] == "passkey" and summary["lengths"] == [320]
    assert 0.0 <= summary["table"]["passkey"][320] <= 100


def test_gradient_checkpointing_gives_the_same_losses(tiny_cfg, tmp_path):
    import lightning.pytorch as pl

    seen = []

    class Check(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            m = pl_module.model  # is_activation_checkpointing from transformers 5.24 on
            on = getattr(m, "is_activation_checkpointing", None)
            on = m.is_gradient_checkpointing if on is None else on
            seen.append(on and m.training)

    runs = [train(tiny_cfg("trainer.max_steps=2", "memory=mag", *MEM, "memory.window=32", "bptt.bptt_window=2",
                           f"gradient_checkpointing={flag}", f"paths.output_dir={tmp_path / str(flag)}"),
                  extra_callbacks=[Check()])
            for flag in (False, True)]
    assert seen == [False, False, True, True]
    with pytest.raises(ValueError, match="returned no cache.*gradient_checkpointing=false"):
        # plain HF layers drop the cache under gradient checkpointing: refused, not silently wrong
        train(tiny_cfg("trainer.max_steps=1", "gradient_checkpointing=true", f"paths.output_dir={tmp_path / 'p'}"))
    torch.testing.assert_close(runs[0]["train/losses"], runs[1]["train/losses"], rtol=1e-5, atol=1e-6)


def test_diagnostics_are_recorded_only_on_the_steps_that_log_them(tiny_cfg):
    """The memory computes its aux (surprise, errors, ...) for diagnostics only on batches whose end may log
    (step % n == 0, or the step before it), and everything is logged at those steps."""
    import titans.training.run as run_mod
    from titans.memory import NeuralMemory

    asked = []  # per batch: did any memory forward get return_aux=True

    class Spy(run_mod.pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            asked.append(False)
            if not hasattr(self, "hooks"):
                self.hooks = [m.register_forward_pre_hook(self.pre, with_kwargs=True)
                              for m in pl_module.model.modules() if isinstance(m, NeuralMemory)]

        @staticmethod
        def pre(_m, args, kwargs):
            if kwargs.get("return_aux") or (len(args) > 2 and args[2]):
                asked[-1] = True

    metrics = train(tiny_cfg("memory=mag", *MEM, "memory.window=32", "trainer.max_steps=6"),
                    extra_callbacks=[DiagnosticsCallback(every_n_steps=4), Spy()])
    # batch i starts at global step i: record at 0 (0 % 4), 3 (next step 4), 4 (4 % 4); not at 1, 2, 5
    assert asked == [True, False, False, True, True, False]
    assert "diag/layer0/gate_mean" in metrics and math.isfinite(metrics["diag/layer0/surprise_norm"])
