"""Train a task: ``python tools/train.py task=classification [overrides...]``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from tasks.runner import train  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    train(cfg)


if __name__ == "__main__":
    main()
