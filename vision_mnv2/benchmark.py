"""Speed and size measurements: this project's networks side by side with torchvision's, in the same
process and run, so that ratios are meaningful on a shared or noisy machine.

Every network is measured as a function of a float image batch in [0, 1]: in eager PyTorch (eval,
no grad) and exported to ONNX and run in onnxruntime. Detection is timed without NMS in both (the
exported graph has none; :mod:`vision_mnv2.export`) so the two columns time the same work.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .complexity import count_macs, count_parameters
from .export import IMAGENET_MEAN, IMAGENET_STD, ImageNormalize, SSDExportWrapper

__all__ = ["Measurement", "reference_model", "as_tensor_function", "measure", "time_call", "peak_rss_delta_mb"]


@dataclass
class Measurement:
    name: str
    params: int
    macs: int
    eager_latency_ms: float  # batch 1, median
    eager_throughput: float  # images/s at the large batch
    onnx_latency_ms: float | None
    onnx_throughput: float | None
    peak_memory_mb: float | None  # resident memory added by one batch-1 forward (CPU) or CUDA peak

    def row(self) -> dict:
        return asdict(self)


def reference_model(task: str) -> tuple[str, nn.Module, int]:
    """torchvision's counterpart of each task (random weights: speed does not depend on them)."""
    from torchvision.models import mobilenet_v2  # noqa: PLC0415
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large  # noqa: PLC0415
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large  # noqa: PLC0415

    if task == "classification":
        return "torchvision mobilenet_v2", mobilenet_v2(), 224
    if task == "detection":
        return "torchvision ssdlite320_mobilenet_v3_large", ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None), 320
    if task == "segmentation":
        return "torchvision deeplabv3_mobilenet_v3_large", deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21), 513
    raise ValueError(f"unknown task {task!r}")


class _OutTensor(nn.Module):
    """torchvision's segmentation models return ``{"out": ...}``; export and time the tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def as_tensor_function(model: nn.Module, task: str, image_size: int) -> nn.Module:
    """The network as ``images in [0, 1] -> tensors``, the form that is both timed and exported."""
    if task == "detection":
        return SSDExportWrapper(model.eval(), image_size).eval()
    return ImageNormalize(_OutTensor(model.eval()), IMAGENET_MEAN, IMAGENET_STD).eval()


def time_call(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_delta_mb(fn: Callable[[], object]) -> float | None:
    """Resident memory a call adds at its peak (Linux; None elsewhere), from /proc's high-water mark
    reset by ``clear_refs``: activations and workspace, not the weights already loaded."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _vm_hwm_kb()
        fn()
        return max(0.0, (_vm_hwm_kb() - before) / 1024)
    except OSError:
        return None


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM")


def _onnx_session(function: nn.Module, image_size: int, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    handle, path = tempfile.mkstemp(suffix=".onnx")
    os.close(handle)
    try:
        example = torch.rand(2, 3, image_size, image_size)
        outputs = function(example)
        names = [f"out{i}" for i in range(len(outputs))] if isinstance(outputs, tuple) else ["out0"]
        with torch.no_grad():
            torch.onnx.export(
                function, (example,), path, input_names=["images"], output_names=names, opset_version=17,
                dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False,
            )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(path)


@torch.no_grad()
def measure(
    name: str,
    model: nn.Module,
    task: str,
    image_size: int,
    batch: int = 16,
    warmup: int = 3,
    iters: int = 10,
    onnx: bool = True,
    threads: int | None = None,
) -> Measurement:
    """Parameters, MACs, eager and onnxruntime latency (batch 1) and throughput (``batch``)."""
    threads = threads or torch.get_num_threads()
    function = as_tensor_function(model, task, image_size)
    one = torch.rand(1, 3, image_size, image_size)
    many = torch.rand(batch, 3, image_size, image_size)
    macs = count_macs(function, (image_size, image_size))
    eager_latency = time_call(lambda: function(one), warmup, iters)
    eager_batch = time_call(lambda: function(many), 1, max(2, iters // 3))
    gc.collect()
    peak = peak_rss_delta_mb(lambda: function(one))
    onnx_latency = onnx_throughput = None
    if onnx:
        session = _onnx_session(function, image_size, threads)
        feed_one, feed_many = {"images": one.numpy()}, {"images": many.numpy()}
        onnx_latency = time_call(lambda: session.run(None, feed_one), warmup, iters) * 1000
        onnx_throughput = batch / time_call(lambda: session.run(None, feed_many), 1, max(2, iters // 3))
    return Measurement(
        name, count_parameters(model), macs, eager_latency * 1000, batch / eager_batch, onnx_latency, onnx_throughput, peak
    )
