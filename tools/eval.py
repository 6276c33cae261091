"""Evaluate a checkpoint: ``python tools/eval.py ckpt_path=PATH [data=... data.root=...]``.

Task and model come from the checkpoint; the data too when it was trained here. Prints the metrics
and writes ``metrics.json`` into the run folder."""

import sys

import hydra
from omegaconf import DictConfig

from tasks.checkpoints import with_task_from_checkpoint
from tasks.runner import evaluate


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    sys.argv = with_task_from_checkpoint(sys.argv)  # compose the checkpoint's task when none is named
    main()
