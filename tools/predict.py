"""Predict on your images: ``python tools/predict.py ckpt_path=PATH input=IMAGE|FOLDER|COCO.json|LIST.txt``.

Task, model and preprocessing come from the checkpoint (or an ONNX export of this project). Writes
drawn images (boxes / mask overlays) and ``predictions.json`` (COCO results format for detection,
top-5 for classification, masks for segmentation) into ``output_dir`` or the run folder."""

import sys

import hydra
from omegaconf import DictConfig

from tasks.cli import with_task_from_checkpoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from tasks.inference import predict  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    predict(cfg)


if __name__ == "__main__":
    sys.argv = with_task_from_checkpoint(sys.argv)  # compose the checkpoint's task when none is named
    main()
