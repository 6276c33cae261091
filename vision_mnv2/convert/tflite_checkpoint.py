"""Google's TFLite models as complete checkpoints of this project (``tools/convert.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import ModelMeta, save_model
from ..pipelines import describe
from .tflite import load_tflite

__all__ = ["convert_tflite"]

# TF-slim evaluates its classifiers on the central 87.5% of the image (the default, with which
# Google's accuracies were measured); label_image and the Coral examples resize the whole photo.
# DeepLab pads to its crop. All are in the hints of every converted model: each task's
# preprocessing takes the ones it uses.
CROP_FRACTION = 0.875


def convert_tflite(
    path: str | os.PathLike,
    output: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    keep_background: bool = False,
    calibration: str | os.PathLike | None = None,
    calibrate: bool = True,
    num_calibration_images: int = 32,
    preprocessing: str = "crop",
    crop_fraction: float = CROP_FRACTION,
) -> tuple[Path, ModelMeta]:
    """Read a TFLite file (:func:`vision_mnv2.convert.load_tflite`) and write it as a checkpoint that
    describes its model like a trained one: builder and arguments (TF's padding, channel rounding,
    DeepLab's corner-aligned upsampling), the input scaling read from the graph, the preprocessing the graph was
    made for (classifiers: ``preprocessing`` ``crop``, the central ``crop_fraction``, or
    ``resize``, the whole photo), class names from ``labels``, and where it came from. Returns the
    path and the description."""
    model, info = load_tflite(
        path,
        labels=labels,
        keep_background=keep_background,
        calibrate=calibrate,
        calibration=calibration,
        num_calibration_images=num_calibration_images,
    )
    height, width = info["input_size"]
    hints = {
        "image_size": int(height),
        "mode": preprocessing,
        "crop_fraction": crop_fraction,
        "pad_to": [int(height), int(width)],
    }
    source = {
        "converted_from": str(Path(path).name),
        "format": "tflite",
        "input": info["input_scaling"],
        "batch_norm_statistics": (
            "none (identity)" if not calibrate else str(calibration) if calibration else "generated scenes"
        ),
    }
    meta = describe(info["task"], model, hints, class_names=info["class_names"], training=source)
    return save_model(output, model, meta), meta
