"""Train a task: ``python tools/train.py task=classification [overrides...]``."""

import hydra
from omegaconf import DictConfig

from tasks.runner import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
