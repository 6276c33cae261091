"""Predict on your images: ``python tools/predict.py ckpt_path=PATH input=IMAGE|FOLDER|COCO.json|LIST.txt``.

Task, model and preprocessing come from the checkpoint (or an ONNX export of this project). Writes
drawn images (boxes / mask overlays) and ``predictions.json`` (COCO results format for detection,
top-5 for classification, masks for segmentation) into ``output_dir`` or the run folder."""

from omegaconf import DictConfig

from tasks.cli import run_tool


def main(cfg: DictConfig) -> None:
    from tasks.inference import predict  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    predict(cfg)


if __name__ == "__main__":
    # Composes the checkpoint's task when none is named; errors about the input are one line.
    run_tool(main, config_name="predict", task_from_checkpoint=True)
