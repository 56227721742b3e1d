"""Train: `python train.py model=qwen3_tiny memory=mag trainer.max_steps=3 paths.output_dir=DIR`."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from titans.training.run import train

    train(cfg)


if __name__ == "__main__":
    from titans.training.hydra_job import show_config_with_stage

    if not show_config_with_stage(sys.argv[1:], "train"):  # `--cfg job stage=...`: the stage applied
        main()
