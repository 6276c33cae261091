"""int8 post-training quantisation through onnxruntime, with its accuracy and speed measured:

    python tools/quantize.py ckpt_path=PATH [quantize.calibration_images=256] [quantize.update_docs=true]

Exports fp32 ONNX, quantises it (static, calibrated on training images), scores both on the
validation split (the checkpoint's own data unless ``data=...`` is given) and times both at batch 1;
the report goes to the run folder."""

from omegaconf import DictConfig

from tasks.cli import run_tool


def main(cfg: DictConfig) -> None:
    from tasks.quantize import run_quantize  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    run_quantize(cfg)


if __name__ == "__main__":
    # Composes the checkpoint's task when none is named; errors about the input are one line.
    run_tool(main, config_name="quantize", task_from_checkpoint=True)
