"""Predict on your images: ``python tools/predict.py task=ssdlite ckpt_path=PATH input=IMAGE_OR_FOLDER``.

Writes drawn images (boxes / mask overlays) and ``predictions.json`` (COCO results format for
detection, top-5 for classification, masks for segmentation) into ``output_dir`` or the run folder."""

import hydra
from omegaconf import DictConfig

from tasks.inference import predict


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
