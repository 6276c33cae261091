"""Train a task: ``python tools/train.py task=classification [overrides...]``."""

from omegaconf import DictConfig

from tasks.cli import run_tool


def main(cfg: DictConfig) -> None:
    from tasks.runner import train  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    train(cfg)


if __name__ == "__main__":
    run_tool(main, config_name="train")  # Hydra composes configs/train.yaml; errors about the input are one line
