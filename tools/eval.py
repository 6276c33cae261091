"""Evaluate a checkpoint: ``python tools/eval.py ckpt_path=PATH [data=... data.root=...]``.

Task and model come from the checkpoint; the data too when it was trained here. Prints the metrics
and writes ``metrics.json`` into the run folder."""

import sys

import hydra
from omegaconf import DictConfig

from tasks.cli import with_task_from_checkpoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from tasks.runner import evaluate  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    evaluate(cfg)


if __name__ == "__main__":
    sys.argv = with_task_from_checkpoint(sys.argv)  # compose the checkpoint's task when none is named
    main()
