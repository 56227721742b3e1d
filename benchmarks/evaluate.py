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
from pathlib import Path
from typing import Any

import torch

from titans.io import write_json, write_text
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

        loader = getattr(titans, "from_pretrained", None)
        if loader is None:
            raise ValueError(f"model_dir={str(path)!r} holds a Titans-patched model but titans.from_pretrained is "
                             f"not available in this install; update titans")
        model = loader(str(path))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path))
    has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return model, load_tokenizer(str(path) if has_tok else "byte")


def _main_model(cfg: dict):
    """(name, model, tokenizer) of the model under evaluation, from the first source that is set."""
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


def _comparison(results: dict[str, dict], out: Path, suite: str) -> dict:
    """One row per model: the mean of the suite's table rows at each length (RULER: its average row)."""
    from benchmarks import reports

    table: dict[str, dict[int, float | None]] = {}
    lengths: list[int] = []
    for name, s in results.items():
        lengths = sorted(set(lengths) | {int(n) for n in s["lengths"]})
        if suite == "ppl":
            table[name] = {int(n): v for n, v in s["late"].items()}
            continue
        rows = s["table"].get("average") and {"average": s["table"]["average"]} or s["table"]
        table[name] = {}
        for n in s["lengths"]:
            vals = [r[n] for r in rows.values() if r.get(n) is not None]
            table[name][int(n)] = round(sum(vals) / len(vals), 2) if vals else None
    if suite == "sniah":  # the Titans paper's Table 2: one row per model, PK/N/W x length columns
        wide = {name: {r: {int(n): v for n, v in vals.items()} for r, vals in s["table"].items()}
                for name, s in results.items()}
        write_text(out / "table2.md", "# S-NIAH (Titans Table 2 layout)\n\n"
                           + reports.wide_markdown_table(wide, lengths))
    metric = "perplexity of the last position bucket" if suite == "ppl" else "mean score (%)"
    write_text(out / "comparison.md", f"# {suite}: models compared ({metric})\n\n"
                       + reports.markdown_table(table, lengths, "model", digits=2))
    reports.lines(table, lengths, out / "comparison.png", title=f"{suite}: models compared", metric=metric,
                  ylim=None if suite == "ppl" else (0, 100))
    return table


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


def evaluate(cfg) -> dict[str, Any]:
    """Run `cfg.benchmark` on the configured model (and `cfg.baselines`); returns {model name: summary}.

    `cfg` is the composed conf/eval.yaml (a DictConfig or a plain dict with the same keys).
    """
    from benchmarks.runner import run_suite
    from benchmarks.suites import SUITE_NAMES

    cfg = to_plain(cfg)
    bench = dict(cfg.get("benchmark") or {})
    suite = bench.pop("name", None)
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
    out = Path(cfg["paths"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    except ImportError:  # pragma: no cover
        text = json.dumps(cfg, indent=2)
    write_text(out / "config.yaml", text)
    device = resolve_device(cfg.get("device"))
    wandb_run = _wandb_run(cfg)
    lengths, samples = bench.pop("lengths", None), bench.pop("samples", None)
    results: dict[str, dict] = {}
    loaders = [lambda: _main_model(cfg)] + [lambda b=b: _baseline(cfg, b) for b in baselines]
    for load in loaders:
        seed_everything(seed)  # the same config builds the same model (memory init) in every process
        name, model, tok = load()
        if name in results:
            log.warning("baseline %r is the model under evaluation; evaluated once", name)
            continue
        model.to(device).eval()
        log.info("evaluating %s on %s", name, suite)
        results[name] = run_suite(model, tok, suite, output_dir=out / name, lengths=lengths, samples=samples,
                                  segment_len=segment_len, seed=seed,
                                  max_new_tokens=cfg.get("max_new_tokens"), model_name=name,
                                  progress=bool(cfg.get("progress", True)), wandb_run=wandb_run, **bench)
        del model
    write_json(out / "summary.json", results)
    if len(results) > 1:
        _comparison(results, out, suite)
    if wandb_run is not None:
        getattr(wandb_run, "experiment", wandb_run).finish()
    return results
