"""`train(cfg)`: compose the parts from a Hydra config and fit; `evaluate(cfg)` (re-exported).

Hydra stays here: the builders turn config groups into finished parts (model, data, module, trainer)
and the library classes never see a DictConfig.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from titans.compat import enable_activation_checkpointing
from titans.io import write_json
from titans.memory.malloc import keep_freed_memory
from titans.training.builders import build_model, memory_options, to_plain
from titans.training.checkpoint import AtomicCheckpointIO, check_arch, check_checkpoint, read_checkpoint
from titans.training.data import DataConfig, TitansDataModule
from titans.training.hydra_job import hydra_overrides, job_output_dir
from titans.training.module import BPTTConfig, TitansLitModule
from titans.training.stages import apply_stage

log = logging.getLogger(__name__)

TOP_KEYS = {"model", "memory", "data", "trainer", "logger", "callbacks", "paths", "bptt", "optimizer", "scheduler",
            "curriculum", "stage", "seed", "cpu_threads", "malloc_keep_freed", "gradient_checkpointing", "freeze",
            "init_from", "ckpt_path", "allow_arch_mismatch", "final_validation", "task_name", "experiment", "debug",
            "hydra"}


class LitData(pl.LightningDataModule):
    """Lightning face of `TitansDataModule`: the train stream starts at the batch the module has reached
    (`batches_seen`, restored from a checkpoint before the dataloaders are built), on this rank."""

    def __init__(self, data: TitansDataModule) -> None:
        super().__init__()
        self.data = data

    def train_dataloader(self):
        module = self.trainer.lightning_module
        return self.data.train_loader(start_batch=getattr(module, "batches_seen", 0),
                                      rank=self.trainer.global_rank, world_size=self.trainer.world_size)

    def val_dataloader(self):
        loader = self.data.val_loader()
        return loader if loader is not None else []


def check_config(cfg: DictConfig) -> None:
    """Cross-group consistency checks that no single group can make; ValueError naming keys and fixes."""
    unknown = sorted(set(cfg.keys()) - TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {unknown}; allowed: {sorted(TOP_KEYS)}.")
    variant, options = memory_options(cfg.memory)
    seg = cfg.bptt.segment_len
    if variant == "mac":
        mac_seg = options.get("segment_len")
        window = options.get("window")
        if mac_seg is not None and window is not None and window > mac_seg:
            raise ValueError(f"memory.window={window} is larger than memory.segment_len={mac_seg}; MAC attends "
                             f"within a segment, so set memory.window <= memory.segment_len (or null).")
        if mac_seg is not None and seg % mac_seg:
            raise ValueError(f"bptt.segment_len={seg} is not a multiple of memory.segment_len={mac_seg} (MAC); "
                             f"set bptt.segment_len to a multiple of it, e.g. {max(1, seg // mac_seg) * mac_seg}.")
    if cfg.trainer.get("max_steps") is None or cfg.trainer.max_steps <= 0:
        raise ValueError(f"trainer.max_steps={cfg.trainer.get('max_steps')!r}: training draws from an endless stream, "
                         f"so set trainer.max_steps to a positive int.")
    seq_len = cfg.data.get("seq_len")
    if cfg.bptt.get("strict_segments") and seq_len is not None and seq_len % seg:
        raise ValueError(f"bptt.strict_segments=true but data.seq_len={seq_len} is not a multiple of "
                         f"bptt.segment_len={seg}; set data.seq_len to {-(-seq_len // seg) * seg} or "
                         f"bptt.strict_segments=false.")
    if cfg.get("freeze") not in (None, "memory", "lora", "none"):
        raise ValueError(f"freeze={cfg.freeze!r} is not allowed; allowed: null, memory, lora, none.")
    if not isinstance(cfg.get("malloc_keep_freed", True), bool):
        raise ValueError(f"malloc_keep_freed={cfg.malloc_keep_freed!r} is not allowed; allowed: true (glibc keeps "
                         f"freed memory for reuse, titans.memory.malloc) or false (glibc's default).")


def _instantiate_all(group: Any) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(v) for v in group.values() if v is not None and "_target_" in v]


def build_module(cfg: DictConfig, model) -> TitansLitModule:
    from hydra.utils import instantiate

    optimizer = instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return TitansLitModule(model, BPTTConfig(**to_plain(cfg.bptt)), optimizer=optimizer, scheduler=scheduler)


def build_trainer(cfg: DictConfig, callbacks: list | None = None, loggers: list | None = None) -> pl.Trainer:
    from hydra.utils import instantiate

    callbacks = _instantiate_all(cfg.get("callbacks")) if callbacks is None else callbacks
    loggers = _instantiate_all(cfg.get("logger")) if loggers is None else loggers
    plugins = [AtomicCheckpointIO()] if "deepspeed" not in str(cfg.trainer.get("strategy", "")) else None
    overrides = {}
    if str(cfg.trainer.get("precision")) in ("16-mixed", "16") and cfg.trainer.get("accelerator") == "cpu":
        # Lightning turns fp16 AMP on CPU into bf16 (with a warning); torch's CPU autocast and GradScaler do
        # fp16, so build the plugin ourselves and the run gets the precision it asked for.
        import torch
        from lightning.pytorch.plugins.precision import MixedPrecision

        plugins = [*(plugins or []), MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
        overrides["precision"] = None
    # training_step steps the optimizer itself (manual optimization), so a checkpoint holds the weights after
    # the step: what resuming needs. Lightning warns about exactly that, with a 12-line example, on every run.
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    # Lightning's pytree helper calls an API torch 2.13 deprecated (lightning/pytorch/utilities/_pytree.py)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **overrides)


def check_writable(path: str | os.PathLike, key: str) -> Path:
    """Create directory `path` and write (then remove) a probe file in it; a ValueError naming `key` when that
    fails, so an unwritable output or checkpoint directory stops the run before training, not at its first save."""
    import tempfile

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{key}={str(path)!r} is not a writable directory ({type(e).__name__}: {e.strerror or e}); "
                         f"point {key} at a directory you can write to.") from e
    return p


def _loggers(cfg: DictConfig, wandb_id: str | None) -> list:
    """The loggers of `cfg.logger`; a resumed W&B run continues the run of the checkpoint (same id)."""
    from hydra.utils import instantiate

    out = []
    for v in (cfg.get("logger") or {}).values():
        if v is None or "_target_" not in v:
            continue
        extra = {"id": wandb_id, "resume": "allow"} if wandb_id and "wandb" in str(v._target_) else {}
        out.append(instantiate(v, **extra))
    return out


def train(cfg: DictConfig, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Train per `cfg` (conf/train.yaml composed) and return metrics.

    `extra_callbacks`: Lightning callbacks added to those of `cfg.callbacks` (programmatic use).

    Returns a dict: the trainer's last logged metrics (`train/loss`, `val/loss`, `val/answer_acc`, ...
    as floats), `train/losses` (per-batch training loss of this process), `global_step`, `last_ckpt`
    and `output_dir`. Also written to `<paths.output_dir>/metrics.json`.
    """
    from titans.training.loggers import tidy_logging

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    tidy_logging()
    job_output_dir(cfg)
    if cfg.get("stage") is not None:
        cfg = apply_stage(cfg, cfg.stage, overrides=hydra_overrides())
    check_config(cfg)
    allow = bool(cfg.get("allow_arch_mismatch", False))
    ckpt_path = check_checkpoint(cfg.get("ckpt_path"), "ckpt_path")
    # read weights-only before anything else sees the file (Lightning loads it again, weights-only too)
    resume = read_checkpoint(ckpt_path, "ckpt_path") if ckpt_path is not None else None
    init_from = check_checkpoint(cfg.get("init_from"), "init_from")
    out_dir = check_writable(cfg.paths.output_dir, "paths.output_dir")
    check_writable(cfg.paths.ckpt_dir, "paths.ckpt_dir")
    if cfg.get("cpu_threads"):
        import torch

        torch.set_num_threads(int(cfg.cpu_threads))
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)

    # init_from (curriculum chaining) is ignored when resuming: the checkpoint restores everything
    start = str(init_from) if init_from is not None and ckpt_path is None else None
    model, tokenizer = build_model(cfg.model, cfg.memory, freeze=cfg.get("freeze"), init_from=start,
                                   allow_arch_mismatch=allow)
    if resume is not None:
        check_arch(resume, model, "ckpt_path", ckpt_path, allow)
    if cfg.get("gradient_checkpointing"):
        # recompute each decoder layer in backward (long segments on GPU); patched layers keep their cache
        enable_activation_checkpointing(model)
    data = TitansDataModule(DataConfig.from_mapping(to_plain(cfg.data)), tokenizer)
    module = build_module(cfg, model)
    callbacks = _instantiate_all(cfg.get("callbacks")) + list(extra_callbacks or [])
    saved = (resume or {}).get("titans") or {}
    loggers = _loggers(cfg, saved.get("wandb_id"))
    for lg in loggers:  # CSV: a resumed run continues the file, a new one starts it over
        if resume is not None and hasattr(lg, "continue_log"):
            lg.continue_log()
        elif hasattr(lg, "drop_from"):
            lg.drop_from(0)
    trainer = build_trainer(cfg, callbacks=callbacks, loggers=loggers)
    resolved = to_plain(cfg)
    resolved.pop("hydra", None)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)

    trainer.fit(module, datamodule=LitData(data), ckpt_path=str(ckpt_path) if ckpt_path else None,
                weights_only=True)
    last = Path(cfg.paths.ckpt_dir) / "last.ckpt"
    trainer.save_checkpoint(last)  # a write (with optimizer state, for resume); every load is weights-only
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    if cfg.get("final_validation", True) and data.val_loader() is not None:
        for k, v in trainer.validate(module, datamodule=LitData(data), verbose=False)[0].items():
            metrics[k] = float(v)
    metrics.update({"train/losses": list(module.last_losses), "global_step": int(trainer.global_step),
                    "skipped_steps": module.skipped_steps, "last_ckpt": str(last), "output_dir": str(out_dir)})
    if trainer.is_global_zero:
        write_json(out_dir / "metrics.json", metrics, sort_keys=True)
        for lg in trainer.loggers:
            lg.finalize("success")
    _finish_wandb(trainer)
    return metrics


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Finish the W&B runs so their (offline) files are complete when train() returns."""
    from lightning.pytorch.loggers import WandbLogger

    from titans.training.loggers import wait_for_wandb_exit

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            run = lg.experiment
            offline = run.offline
            run_dir = Path(run.dir).parent  # <save_dir>/wandb/<offline-run-...>/files -> the run directory
            run.finish()
            lg._experiment = None
            if offline and not wait_for_wandb_exit(run_dir):
                log.warning("wandb: the offline run file in %s was not complete 15 s after finish()", run_dir)

