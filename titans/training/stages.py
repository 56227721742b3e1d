"""Curriculum stages: each stage is a name and overrides of top-level keys, merged onto the composed config.

`titans.training.run.train(cfg)` applies one stage (`stage=<name or index>`); `titans.training.curriculum`
runs them all in order.
"""

from __future__ import annotations

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


def apply_stage(cfg: DictConfig, stage: str | int) -> DictConfig:
    """`cfg` with the overrides of curriculum stage `stage` (a name or 0-based index) merged in."""
    stages = stages_of(cfg)
    names = [st.name for st in stages]
    if isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage < len(stages):
        st = stages[stage]
    elif stage in names:
        st = stages[names.index(stage)]
    else:
        raise ValueError(f"stage={stage!r} is not a stage of this curriculum; allowed: {names} or 0..{len(names) - 1}.")
    overrides = {k: v for k, v in OmegaConf.to_container(st, resolve=False).items() if k != "name"}
    merged = OmegaConf.merge(cfg, overrides)
    merged.stage = None
    return merged
