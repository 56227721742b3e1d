"""Curriculum: run the stages of `cfg.curriculum.stages` in order, each starting from the previous one's weights.

    python -m titans.training.curriculum curriculum=tiny memory=mag paths.output_dir=DIR

A stage is a mapping with a `name` and overrides of top-level keys (`data`, `bptt`, `freeze`, `trainer`,
`optimizer`, `scheduler`, `seed`), merged onto the composed config. Stage i writes to
`DIR/<i>_<name>/` and its `checkpoints/last.ckpt` is the `init_from` of stage i+1 (weights only: the
optimizer and schedule start fresh). The model and memory architecture stay the same across stages.
`DIR/curriculum.json` lists each stage's metrics. A run that stopped can be continued with
`curriculum.skip_done=true`: stages whose last.ckpt and metrics.json exist are not run again.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from titans.io import write_json
from titans.training.run import train
from titans.training.stages import apply_stage, stages_of

log = logging.getLogger(__name__)

def run_curriculum(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run every stage; returns the list of per-stage metrics (see `titans.training.run.train`)."""
    from titans.training.checkpoint import check_checkpoint

    stages = stages_of(cfg)
    root = Path(cfg.paths.output_dir)
    prev = check_checkpoint(cfg.get("init_from"), "init_from")
    skip_done = bool((cfg.curriculum or {}).get("skip_done", False))
    results = []
    for i, st in enumerate(stages):
        scfg = apply_stage(cfg, i)
        out = root / f"{i + 1}_{st.name}"
        scfg.paths.output_dir = str(out)
        scfg.paths.ckpt_dir = str(out / "checkpoints")
        scfg.init_from = str(prev) if prev is not None else None
        scfg.ckpt_path = None
        last = out / "checkpoints" / "last.ckpt"
        if skip_done and last.is_file() and (out / "metrics.json").is_file():
            import json

            log.info("curriculum: stage %s already done (%s), skipping", st.name, last)
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            log.info("curriculum: stage %d/%d %s from %s", i + 1, len(stages), st.name, prev or "the built model")
            metrics = train(scfg)
        metrics["stage"] = st.name
        metrics["init_from"] = str(prev) if prev is not None else None
        results.append(metrics)
        prev = Path(metrics["last_ckpt"])
        write_json(root / "curriculum.json", {"stages": results}, sort_keys=True)
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`python -m titans.training.curriculum [overrides]`: compose conf/train.yaml and run all stages."""
    from hydra import compose, initialize_config_dir

    argv = sys.argv[1:] if argv is None else argv
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3", job_name="curriculum"):
        cfg = compose(config_name="train", overrides=list(argv))
    return run_curriculum(cfg)


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
