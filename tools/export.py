"""Export a checkpoint to ONNX: ``python tools/export.py ckpt_path=PATH [export.file=model.onnx] [export.nms=true]``.

The file describes its model in its metadata (task, classes, category ids, input size, normalisation);
detection graphs have NMS inside, segmentation graphs take any size."""

from omegaconf import DictConfig

from tasks.cli import run_tool


def main(cfg: DictConfig) -> None:
    from tasks.inference import export  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    export(cfg)


if __name__ == "__main__":
    # Composes the checkpoint's task when none is named; errors about the input are one line.
    run_tool(main, config_name="export", task_from_checkpoint=True)
