"""Importing networks trained elsewhere: Google's released MobileNetV2 models (TFLite files)."""

from .batch_norm import calibrate_batch_norm, calibration_images
from .tflite import SUPPORTED_FAMILIES, TFLiteImportError, TFLiteUnsupportedGraph, dequantize, load_tflite, read_tflite

__all__ = [
    "SUPPORTED_FAMILIES",
    "TFLiteImportError",
    "TFLiteUnsupportedGraph",
    "calibrate_batch_norm",
    "calibration_images",
    "dequantize",
    "load_tflite",
    "read_tflite",
]
