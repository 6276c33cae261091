"""Export a checkpoint to ONNX: ``python tools/export.py ckpt_path=PATH [export.file=model.onnx] [export.nms=true]``.

The file describes its model in its metadata (task, classes, category ids, input size, normalisation);
detection graphs have NMS inside, segmentation graphs take any size."""

import sys

import hydra
from omegaconf import DictConfig

from tasks.cli import with_task_from_checkpoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    from tasks.inference import export  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    export(cfg)


if __name__ == "__main__":
    sys.argv = with_task_from_checkpoint(sys.argv)  # compose the checkpoint's task when none is named
    main()
