"""Evaluate a model on a benchmark: `python evaluate.py benchmark=niah model=qwen3_tiny memory=mag ...`

See conf/eval.yaml and docs/evaluation.md. The work is done by `benchmarks.evaluate.evaluate(cfg)`.
"""

import hydra
from omegaconf import DictConfig

from benchmarks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
