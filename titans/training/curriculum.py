"""Curriculum: run the stages of `cfg.curriculum.stages` in order, each starting from the previous one's weights.

    python -m titans.training.curriculum curriculum=tiny memory=mag paths.output_dir=DIR

A stage is a mapping with a `name` and overrides of top-level keys (`data`, `bptt`, `freeze`, `trainer`,
`optimizer`, `scheduler`, `seed`), merged onto the composed config as defaults: what the command line
sets wins (`trainer.max_steps=3` runs every stage for 3 steps). Stage i writes to
`DIR/<i>_<name>/` and its `checkpoints/last.ckpt` is the `init_from` of stage i+1 (weights only: the
optimizer and schedule start fresh). The model and memory architecture stay the same across stages.
`DIR/curriculum.json` lists each stage's metrics. A run that stopped can be continued with
`curriculum.skip_done=true`: stages whose last.ckpt and metrics.json exist are not run again.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from titans.io import write_json
from titans.training.run import train
from titans.training.stages import apply_stage, stages_of

log = logging.getLogger(__name__)

def run_curriculum(cfg: DictConfig, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run every stage; returns the list of per-stage metrics (see `titans.training.run.train`).

    `overrides`: the command line (Hydra syntax); what it sets wins over every stage's settings."""
    from titans.training.checkpoint import check_checkpoint

    stages = stages_of(cfg)
    root = Path(cfg.paths.output_dir)
    prev = check_checkpoint(cfg.get("init_from"), "init_from")
    skip_done = bool((cfg.curriculum or {}).get("skip_done", False))
    results = []
    for i, st in enumerate(stages):
        scfg = apply_stage(cfg, i, overrides)
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
            log.info("curriculum: stage %d/%d %s starts: %d steps, seq_len %s, segment_len %d, bptt_window %d, "
                     "freeze %s, lr %g, from %s", i + 1, len(stages), st.name, scfg.trainer.max_steps,
                     scfg.data.get("seq_len"), scfg.bptt.segment_len, scfg.bptt.bptt_window, scfg.get("freeze"),
                     (scfg.get("optimizer") or {}).get("lr", float("nan")), prev or "the built model")
            t0 = time.perf_counter()
            metrics = train(scfg)
            log.info("curriculum: stage %d/%d %s done in %.0f s: %d steps (%d skipped), train/loss %.4g, "
                     "val/loss %.4g, val/answer_acc %.3g -> %s", i + 1, len(stages), st.name,
                     time.perf_counter() - t0, metrics["global_step"], metrics.get("skipped_steps", 0),
                     metrics.get("train/loss", float("nan")), metrics.get("val/loss", float("nan")),
                     metrics.get("val/answer_acc", float("nan")), metrics["last_ckpt"])
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
    return run_curriculum(cfg, argv)


if __name__ == "__main__":
    # one line per record, like a Hydra job's console (train() then drops Lightning's own duplicate handler)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        main()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
