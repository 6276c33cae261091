"""Convert Google's released MobileNet models (TFLite, quantised or float) into checkpoints of this
project that predict, evaluate, export and fine-tune like any other. The graph families it reads:
MobileNetV2 classifiers (TF-slim or TF2 / Keras), TF-slim MobileNetV1 classifiers and DeepLab v3
MobileNetV2 (mobile head); any other graph is refused with one line saying where it differs.

    python tools/convert.py mobilenet_v2_1.0_224_quant.tflite --labels imagenet_labels.txt --output mnv2.ckpt
    python tools/convert.py deeplabv3_mnv2_pascal_quant.tflite --labels pascal_voc_segmentation_labels.txt \\
        --output deeplab.ckpt --calibration photos/

Needs the optional extra: pip install -e ".[tflite]" (the pure-Python ``tflite`` reader; no TensorFlow).
"""

from __future__ import annotations

import argparse

from tasks.cli import run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "tflite",
        help="a MobileNetV2 (TF-slim or Keras) or MobileNetV1 classifier, or DeepLab v3 MobileNetV2 .tflite file",
    )
    parser.add_argument("--output", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--labels", help="label file, one class name per line (Google ships one with each model)")
    parser.add_argument(
        "--keep-background",
        action="store_true",
        help="classifiers: keep TF's background logit (1001 classes); by default class i is torchvision's class i",
    )
    parser.add_argument(
        "--calibration",
        help="folder of images to measure batch-norm statistics on (your fine-tuning photos); default generated scenes",
    )
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument(
        "--preprocessing",
        choices=("crop", "resize"),
        default="crop",
        help="classifiers: how photos are fitted to the input. crop: the central --crop-fraction (TF-slim's "
        "evaluation, which Google's published accuracies use); resize: the whole photo (as label_image and the "
        "Coral examples feed it). Recorded in the checkpoint; predict can override it (preprocessing.mode=)",
    )
    parser.add_argument("--crop-fraction", type=float, default=0.875, help="classifiers, --preprocessing crop")
    parser.add_argument(
        "--no-calibration", action="store_true", help="leave batch norm the identity (inference only; fine-tunes badly)"
    )
    args = parser.parse_args(argv)

    from vision_mnv2.convert.tflite_checkpoint import convert_tflite  # noqa: PLC0415  (torch loads after argparse's --help)

    try:
        path, meta = convert_tflite(
            args.tflite,
            args.output,
            labels=args.labels,
            keep_background=args.keep_background,
            calibration=args.calibration,
            calibrate=not args.no_calibration,
            num_calibration_images=args.calibration_images,
            preprocessing=args.preprocessing,
            crop_fraction=args.crop_fraction,
        )
    except ModuleNotFoundError as error:  # the reader of the optional extra
        raise ImportError(f'{error.name} is not installed: pip install -e ".[tflite]"') from error
    size = "x".join(map(str, meta.input_size)) if meta.input_size else "any size"
    normalization = meta.normalization["name"] or _statistics(meta.normalization)
    fed = meta.preprocessing.get("mode")
    fed = f", photos fed by {fed}" + (f" {meta.preprocessing['crop_fraction']}" if fed == "crop" else "") if fed else ""
    print(
        f"{meta.task} model ({meta.builder}, width {meta.builder_args['width_mult']}, {meta.num_classes} classes, "
        f"input {size}, normalization {normalization}{fed}) written to {path}"
    )
    return 0


def _statistics(normalization: dict) -> str:
    return f"mean {normalization['mean'][0] * 255:.4g}/255, std {normalization['std'][0] * 255:.4g}/255"


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
