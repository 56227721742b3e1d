"""`evaluate(cfg)`: the Hydra edge of evaluation (conf/eval.yaml), called by `evaluate.py`.

Builds the model from one source (a Lightning checkpoint, a saved model directory, or model +
memory config), runs one benchmark suite on it and on the requested baselines through the same
runner (`benchmarks.runner.run_suite`: streaming + greedy decoding), writes everything under
`paths.output_dir` and, when `logger=wandb`, logs tables and images to W&B. Library code below this
takes plain arguments; only this module reads the config.

Output layout:
    <output_dir>/config.yaml            the resolved config
    <output_dir>/<model name>/          samples.jsonl, summary.json/.csv, results.md, <suite>.png
    <output_dir>/summary.json           {model name: summary}
    <output_dir>/comparison.md / .png   one row per model (mean over the suite's rows, per length)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from titans.io import write_json, write_text
from titans.memory.malloc import keep_freed_memory
from titans.training.builders import build_model, memory_options, to_plain
from titans.training.checkpoint import load_model_weights

log = logging.getLogger(__name__)

BASELINES = ("base", "swa")


def resolve_device(device: str | None) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise the given torch device string."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N") from e


def load_model_dir(path: str | Path):
    """(model, tokenizer) from a `save_pretrained` directory: `titans.from_pretrained` when its config
    carries a Titans patch, Hugging Face `AutoModelForCausalLM` otherwise."""
    from titans.tokenizers import load_tokenizer

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"model_dir={str(path)!r} has no config.json; give a directory written by save_pretrained")
    patched = "titans" in json.loads(cfg_file.read_text())
    if patched:
        import titans

        model = titans.from_pretrained(str(path))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path))
    has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return model, load_tokenizer(str(path) if has_tok else "byte")


def main_model(cfg: Mapping[str, Any]):
    """(name, model, tokenizer) of the model under evaluation, from the first source of `cfg` that is set
    (`model_dir`, else `model` + `memory` with the weights of `checkpoint` when given); `model_name` names it."""
    variant, options = memory_options(cfg.get("memory"))
    if cfg.get("model_dir"):
        model, tok = load_model_dir(cfg["model_dir"])
        name = Path(cfg["model_dir"]).name
    else:
        model, tok = build_model(cfg["model"], cfg.get("memory"))
        name = (cfg.get("memory") or {}).get("name") or "model"
        if variant is None:
            name = "base"
        elif variant == "swa":
            name = f"swa{options['window']}"
        if cfg.get("checkpoint"):
            load_model_weights(model, cfg["checkpoint"], "checkpoint",
                               allow_arch_mismatch=bool(cfg.get("allow_arch_mismatch", False)))
            name = f"{name}-{Path(cfg['checkpoint']).stem}"
    return cfg.get("model_name") or name, model, tok


def _baseline(cfg: dict, which: str):
    if which not in BASELINES:
        raise ValueError(f"baselines contains {which!r}; allowed: {list(BASELINES)}")
    if which == "base":
        model, tok = build_model(cfg["model"], None)
        return "base", model, tok
    window = (cfg.get("memory") or {}).get("window") or cfg.get("baseline_window")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"baselines=[swa] needs a window: memory.window={window!r} and baseline_window are unset; "
                         f"set baseline_window=<tokens> (the memory model's attention window)")
    model, tok = build_model(cfg["model"], {"variant": None, "window": window})
    return f"swa{window}", model, tok


def _wandb_run(cfg: dict):
    logger_cfg = cfg.get("logger") or {}
    if "wandb" not in logger_cfg:
        return None
    from hydra.utils import instantiate

    return instantiate(logger_cfg["wandb"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (as training does before it builds its model)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate_model(name: str, model, tokenizer, benchmark: Mapping[str, Any], output_dir: str | Path,
                   cfg: Mapping[str, Any], wandb_run=None) -> dict:
    """One model on one benchmark (`benchmark`: `name`, `lengths`, `samples` and the suite's options) through
    `benchmarks.runner.run_suite`, with the run settings of `cfg` (`device`, `segment_len`, `seed`,
    `max_new_tokens`, `progress`); results under `output_dir`. Returns the suite's summary."""
    from benchmarks.runner import run_suite

    bench = dict(benchmark)
    suite, lengths, samples = bench.pop("name"), bench.pop("lengths", None), bench.pop("samples", None)
    model.to(resolve_device(cfg.get("device"))).eval()
    log.info("evaluating %s on %s", name, suite)
    return run_suite(model, tokenizer, suite, output_dir=output_dir, lengths=lengths, samples=samples,
                     segment_len=cfg.get("segment_len", 512), seed=cfg.get("seed", 0),
                     max_new_tokens=cfg.get("max_new_tokens"), model_name=name,
                     progress=bool(cfg.get("progress", True)), wandb_run=wandb_run, **bench)


def evaluate(cfg) -> dict[str, Any]:
    """Run `cfg.benchmark` on the configured model (and `cfg.baselines`); returns {model name: summary}.

    `cfg` is the composed conf/eval.yaml (a DictConfig or a plain dict with the same keys).
    """
    from omegaconf import DictConfig

    from benchmarks.suites import SUITE_NAMES, get_suite
    from titans.training.hydra_job import job_output_dir

    if isinstance(cfg, DictConfig):
        job_output_dir(cfg)  # a sweep (-m): this job's own folder
    cfg = to_plain(cfg)
    suite = (cfg.get("benchmark") or {}).get("name")
    if suite not in SUITE_NAMES:
        raise ValueError(f"benchmark.name={suite!r} is not allowed; allowed: {list(SUITE_NAMES)} "
                         f"(pick one with benchmark=<name>)")
    baselines = list(cfg.get("baselines") or [])
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"baselines contains {b!r}; allowed: {list(BASELINES)}")
    segment_len, seed = cfg.get("segment_len", 512), cfg.get("seed", 0)
    if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len <= 0:
        raise ValueError(f"segment_len={segment_len!r} is not allowed; allowed: an int > 0 (tokens per forward "
                         f"call while streaming the context, e.g. 512).")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is not allowed; allowed: an int.")
    keep_freed = cfg.get("malloc_keep_freed", True)
    if not isinstance(keep_freed, bool):
        raise ValueError(f"malloc_keep_freed={keep_freed!r} is not allowed; allowed: true (glibc keeps freed memory "
                         f"for reuse, titans.memory.malloc) or false (glibc's default).")
    if keep_freed:
        keep_freed_memory()
    out = Path(cfg["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    wandb_run = _wandb_run(cfg)
    results: dict[str, dict] = {}
    loaders = [lambda: main_model(cfg)] + [lambda b=b: _baseline(cfg, b) for b in baselines]
    for load in loaders:
        seed_everything(seed)  # the same config builds the same model (memory init) in every process
        name, model, tok = load()
        if name in results:
            log.warning("baseline %r is the model under evaluation; evaluated once", name)
            continue
        results[name] = evaluate_model(name, model, tok, cfg["benchmark"], out / name, cfg, wandb_run)
        del model
    write_json(out / "summary.json", results)
    if len(results) > 1:
        get_suite(suite).write_comparison(results, out)
    if wandb_run is not None:
        getattr(wandb_run, "experiment", wandb_run).finish()
    return results
