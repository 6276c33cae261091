"""Importing networks trained elsewhere: Google's released MobileNetV2 models (TFLite files)."""

from .batch_norm import calibrate_batch_norm, calibration_images

__all__ = [
    "calibrate_batch_norm",
    "calibration_images",
]
