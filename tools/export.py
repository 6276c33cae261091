"""Export a checkpoint to ONNX: ``python tools/export.py task=deeplabv3 ckpt_path=PATH [export_file=model.onnx]``."""

import sys

import hydra
from omegaconf import DictConfig

from tasks.checkpoints import with_task_from_checkpoint
from tasks.inference import export


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    sys.argv = with_task_from_checkpoint(sys.argv)  # compose the checkpoint's task when none is named
    main()
