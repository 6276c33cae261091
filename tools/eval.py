"""Evaluate a checkpoint: ``python tools/eval.py task=classification ckpt_path=PATH [overrides...]``."""

import hydra
from omegaconf import DictConfig

from tasks.runner import evaluate


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
