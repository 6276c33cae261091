"""Importing networks trained elsewhere: Google's released MobileNetV2 models (TFLite files)."""

from .batch_norm import calibrate_batch_norm, calibration_images
from .tflite import TFLiteImportError, dequantize, load_tflite, read_tflite

__all__ = [
    "TFLiteImportError",
    "calibrate_batch_norm",
    "calibration_images",
    "dequantize",
    "load_tflite",
    "read_tflite",
]
