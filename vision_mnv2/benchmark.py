"""Speed and size measurements: this project's networks side by side with torchvision's, in the same
process and run, so that ratios are meaningful on a shared or noisy machine.

Every network is measured as a function of a float image batch in [0, 1]: in eager PyTorch (eval,
no grad) and exported to ONNX and run in onnxruntime. Detection is timed without NMS in both (the
exported graph has none; :mod:`vision_mnv2.onnx_export`) so the two columns time the same work.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .complexity import count_macs

__all__ = ["Measurement", "cpu_peak_tensor_mb", "cuda_peak_mb", "measure", "peak_rss_delta_mb", "time_call"]


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


def time_call(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median seconds per call over about ``iters`` calls after ``warmup`` untimed ones, with
    ``torch.utils.benchmark.Timer`` (blocks of calls, thread count fixed, CUDA synchronised)."""
    from torch.utils import benchmark  # noqa: PLC0415

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    per_call = timer.timeit(max(1, warmup)).mean  # the warm-up, timed to size the measurement
    return timer.blocked_autorange(min_run_time=max(per_call * max(1, iters), 1e-3)).median


_PEAK_SCRIPT = """
import sys, torch
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
torch.set_num_threads(int(sys.argv[3]))
function = torch.load(sys.argv[1], weights_only=False)
images = torch.rand(1, 3, int(sys.argv[2]), int(sys.argv[2]))
before = status("VmRSS:")
with torch.no_grad():
    function(images)
print((status("VmHWM:") - before) / 1024)
"""


def peak_rss_delta_mb(function: nn.Module, image_size: int, threads: int = 1) -> float | None:
    """Resident memory one batch-1 forward adds at its peak, in a fresh process (Linux only; None
    elsewhere): activations and workspace above the loaded weights, the CPU analogue of CUDA's
    ``max_memory_allocated``. A fresh process, because a warm allocator reuses freed memory."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if not Path("/proc/self/status").is_file():
        return None
    handle, path = tempfile.mkstemp(suffix=".pt")
    os.close(handle)
    try:
        torch.save(function, path)  # our own object, read back by our own script
        run = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, path, str(image_size), str(threads)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        return float(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else None
    finally:
        os.unlink(path)


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
    function: nn.Module,
    params: int,
    image_size: int,
    batch: int = 16,
    warmup: int = 3,
    iters: int = 10,
    onnx: bool = True,
    threads: int | None = None,
) -> Measurement:
    """MACs, eager and onnxruntime latency (batch 1) and throughput (``batch``) of ``function``, a
    network as ``images in [0, 1] -> tensors`` (a pipeline's export module); ``params`` is the
    network's parameter count."""
    threads = threads or torch.get_num_threads()
    function = function.eval()
    one = torch.rand(1, 3, image_size, image_size)
    many = torch.rand(batch, 3, image_size, image_size)
    macs = count_macs(function, (image_size, image_size))
    eager_latency = time_call(lambda: function(one), warmup, iters)
    eager_batch = time_call(lambda: function(many), 1, max(2, iters // 3))
    gc.collect()
    peak = peak_rss_delta_mb(function, image_size, threads)
    onnx_latency = onnx_throughput = None
    if onnx:
        session = _onnx_session(function, image_size, threads)
        feed_one, feed_many = {"images": one.numpy()}, {"images": many.numpy()}
        onnx_latency = time_call(lambda: session.run(None, feed_one), warmup, iters) * 1000
        onnx_throughput = batch / time_call(lambda: session.run(None, feed_many), 1, max(2, iters // 3))
    return Measurement(
        name, params, macs, eager_latency * 1000, batch / eager_batch, onnx_latency, onnx_throughput, peak
    )


def cuda_peak_mb(function: nn.Module, images: torch.Tensor) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        function(images)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def cpu_peak_tensor_mb(function: nn.Module, images: torch.Tensor) -> float:
    """Peak of the bytes held by live tensors during one forward on the CPU, above what was live
    when it started (weights, input): PyTorch's profiler memory timeline, the CPU counterpart of
    CUDA's allocator peak. oneDNN's private scratch buffers are not tensors and not counted."""
    import json  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    activities = [ProfilerActivity.CPU]
    with (
        torch.no_grad(),
        profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True) as prof,
    ):
        function(images)
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(path, device="cpu")
        _, sizes = json.loads(Path(path).read_text())
    finally:
        os.unlink(path)
    totals = [sum(step) for step in sizes]
    return (max(totals) - totals[0]) / 2**20 if totals else 0.0
