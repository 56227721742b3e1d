from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = str(Path(__file__).resolve().parents[2] / "conf")

# Small enough for a step in well under a second on one CPU core.
TINY = [
    "model.arch.hidden_size=64", "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2",
    "model.arch.num_key_value_heads=1", "model.arch.head_dim=32", "model.arch.intermediate_size=128",
    "logger=none", "callbacks=none", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=1000", "data.batch_size=1", "data.seq_len=320", "data.train.lengths=[320]",
    "data.val.lengths=[320]", "data.val.n=2", "data.val_batch_size=2", "bptt.segment_len=160",
    "bptt.bptt_window=1", "scheduler.warmup_steps=1", "final_validation=false",
]


def compose_cfg(overrides=(), config_name="train", return_hydra_config=False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides):
        return compose_cfg([*TINY, f"paths.output_dir={tmp_path}", *overrides])

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads contending with other processes
    make small matmuls ~50x slower (measured); restores the previous setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
