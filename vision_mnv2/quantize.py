"""int8 post-training static quantisation of an exported ONNX model with onnxruntime's quantiser.

Weights are int8 per output channel (depthwise convolutions have few weights per channel, and
per-tensor scales ruin them), activations uint8 with ranges calibrated on sample images, QDQ format
so that onnxruntime fuses them into integer kernels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["quantize_static_onnx"]


def quantize_static_onnx(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration_batches: Iterable[np.ndarray],
    input_name: str = "images",
    method: str = "minmax",
    keep_wrapper_in_float: bool = True,
) -> Path:
    """Write an int8 version of ``fp32_path``; ``calibration_batches`` yields float32 N x 3 x H x W
    arrays in the model's input format (RGB in [0, 1]). ``method``: ``minmax`` or ``percentile``.

    With ``keep_wrapper_in_float`` the nodes of the export wrapper itself (input normalisation,
    softmax, the detector's box decoding with its exponentials: the top-level nodes of the graph)
    stay in float; quantising the decoding cost SSDLite 0.12 mAP here, keeping it costs no time.
    Everything inside the network (convolutions, activations, residual additions) is quantised:
    quantising only the convolutions kept accuracy but gained no speed (a Q/DQ pair around each)."""
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, got {method!r}")
    int8_path = Path(int8_path)
    prepared = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    excluded = []
    if keep_wrapper_in_float:
        import onnx  # noqa: PLC0415

        # Exported module paths name the nodes: "/backbone/...", "/model/..."; the wrapper's own are "/Exp" etc.
        graph = onnx.load(str(prepared)).graph
        excluded = [node.name for node in graph.node if node.name.count("/") <= 1]
    try:
        quantize_static(
            str(prepared), str(int8_path), Reader(),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[method], nodes_to_exclude=excluded,
        )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    return int8_path
