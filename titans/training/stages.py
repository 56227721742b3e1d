"""Curriculum stages: each stage is a name and overrides of top-level keys, merged onto the composed config.

`titans.training.run.train(cfg)` applies one stage (`stage=<name or index>`); `titans.training.curriculum`
runs them all in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

STAGE_KEYS = {"name", "data", "bptt", "freeze", "trainer", "optimizer", "scheduler", "seed"}


def stages_of(cfg: DictConfig) -> list:
    stages = list((cfg.get("curriculum") or {}).get("stages") or [])
    if not stages:
        raise ValueError("curriculum.stages is empty; pick a curriculum with stages, e.g. curriculum=tiny "
                         "(see conf/curriculum/).")
    names = []
    for i, st in enumerate(stages):
        unknown = sorted(set(st.keys()) - STAGE_KEYS)
        if unknown:
            raise ValueError(f"curriculum.stages[{i}] has unknown key(s) {unknown}; allowed: {sorted(STAGE_KEYS)}. "
                             f"The model and memory architecture cannot change between stages.")
        if not st.get("name"):
            raise ValueError(f"curriculum.stages[{i}].name is missing; give every stage a name.")
        names.append(st.name)
    if len(set(names)) != len(names):
        raise ValueError(f"curriculum stage names must be unique, got {names}.")
    return stages


def apply_stage(cfg: DictConfig, stage: str | int, overrides: Sequence[str] = ()) -> DictConfig:
    """`cfg` with the settings of curriculum stage `stage` (a name or 0-based index) merged in.

    The stage supplies defaults: every command-line override in `overrides` (Hydra syntax, e.g.
    `trainer.max_steps=3`; the values are taken from `cfg`, where Hydra already put them) wins over it.
    Group selections (`data=disk`) and `hydra.*` keys are left alone.
    """
    stages = stages_of(cfg)
    names = [st.name for st in stages]
    if isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage < len(stages):
        st = stages[stage]
    elif stage in names:
        st = stages[names.index(stage)]
    else:
        raise ValueError(f"stage={stage!r} is not a stage of this curriculum; allowed: {names} or 0..{len(names) - 1}.")
    values = {k: v for k, v in OmegaConf.to_container(st, resolve=False).items() if k != "name"}
    merged = OmegaConf.merge(cfg, values)
    for key in command_line_keys(cfg, overrides):
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    merged.stage = None
    return merged


def command_line_keys(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """The config keys that `overrides` set to a value (not group selections, deletions or hydra.*)."""
    if not overrides:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if o.is_delete() or o.package is not None or key.split(".")[0] in ("hydra", "stage"):
            continue
        missing = object()
        current = OmegaConf.select(cfg, key, default=missing)
        if current is missing:
            continue  # a selection of a group that is not a key (experiment=X, `@package _global_`)
        if isinstance(current, DictConfig) and isinstance(o.value(), str):
            continue  # a group selection (data=disk): its values are the composed group, the stage refines them
        keys.append(key)
    return keys
