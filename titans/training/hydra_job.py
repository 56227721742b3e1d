"""The Hydra job around `train(cfg)` / `evaluate(cfg)`: its command-line overrides, one output directory per
job of a sweep, and `--cfg job` showing the config a curriculum stage really runs with.

    python train.py -m memory=mag,mal memory.window=32,64     # jobs in <paths.output_dir>/<job number>/
    python train.py curriculum=tiny stage=memory_long trainer.max_steps=3 --cfg job   # the stage applied
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job ([] outside @hydra.main)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def job_output_dir(cfg: DictConfig) -> None:
    """In a sweep (`-m`) every job writes to its own directory: Hydra's `<hydra.sweep.dir>/<hydra.sweep.subdir>`
    (conf: `<paths.output_dir>/<job number>`) becomes the job's `paths.output_dir` (checkpoints, logs and
    metrics.json follow it), so no job writes into a directory another job uses. Outside a sweep: nothing."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.paths.output_dir = HydraConfig.get().runtime.output_dir


def _cfg_flag(argv: Sequence[str]) -> tuple[str | None, list[str], bool]:
    """(the --cfg/-c value, the other arguments, --resolve given)."""
    kind, rest, resolve, skip = None, [], False, False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a in ("--cfg", "-c") and i + 1 < len(argv):
            kind, skip = argv[i + 1], True
        elif a.startswith("--cfg="):
            kind = a.split("=", 1)[1]
        elif a == "--resolve":
            resolve = True
        else:
            rest.append(a)
    return kind, rest, resolve


def show_config_with_stage(argv: Sequence[str], config_name: str) -> bool:
    """`--cfg job` (or `all`) with `stage=<name>`: print the config with the stage applied (command-line
    overrides still winning) and return True. Hydra prints its config before the task runs, so it could not
    show the stage's values; every other use of `--cfg` (and a run) is left to Hydra: False."""
    from hydra import compose, initialize_config_dir

    from titans.training.stages import apply_stage

    kind, overrides, resolve = _cfg_flag(argv)
    if kind not in ("job", "all") or any(a.startswith("-") for a in overrides):
        return False
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name=config_name):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=kind == "all")
    if cfg.get("stage") is None:
        return False
    hydra_node = cfg.pop("hydra", None) if kind == "all" else None
    cfg = apply_stage(cfg, cfg.stage, overrides)
    if hydra_node is not None:
        with open_dict(cfg):
            cfg.hydra = hydra_node
    print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")
    return True
