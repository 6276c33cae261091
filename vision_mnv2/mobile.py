"""On-device export: ExecuTorch programs (``.pte``) lowered to the XNNPACK backend, in float32 or int8.

ExecuTorch rather than LiteRT (litert-torch): litert-torch pins ``torch<2.15`` and cannot be installed
beside this project's torch, while ExecuTorch takes ``torch.export`` graphs of the same torch. The
program runs on Android, iOS and Linux through ExecuTorch's runtime, and here through its Python
bindings (:class:`ExecuTorchRunner`), so the same pipelines predict from it.

A ``.pte`` holds no free-form metadata, so the model's description (what ONNX exports keep in
``metadata_props``) travels beside it as JSON, ``<file>.pte.json``; :func:`read_executorch_meta` reads it.

int8 is XNNPACK's post-training static quantisation through PT2E (torchao): symmetric int8 weights
per output channel (depthwise convolutions have few weights per channel, and per-tensor scales ruin
them), int8 activations with ranges observed on calibration images, lowered to XNNPACK's integer
kernels.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .files import atomic_write

__all__ = [
    "EXECUTORCH_FORMATS",
    "ExecuTorchRunner",
    "executorch_available",
    "read_executorch_meta",
    "sidecar_path",
    "write_executorch",
]

# Values of ``quantize``: none (float32) or XNNPACK's int8.
EXECUTORCH_FORMATS = (None, "int8")


def executorch_available() -> bool:
    try:
        import executorch.exir  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _require_executorch() -> None:
    if not executorch_available():
        raise ImportError(
            "ExecuTorch export needs the `executorch` package: pip install 'vision-mnv2[mobile]' (or executorch>=1.0)"
        )


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the description of the program at ``path`` is kept: ``<file>.pte.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _quantize_int8(module: nn.Module, example: Tensor, calibration: Iterable[Tensor], dynamic_shapes: Any) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # noqa: PLC0415
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: PLC0415

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(graph, quantizer)
    count = 0
    for batch in calibration:
        prepared(torch.as_tensor(batch, dtype=torch.float32))
        count += 1
    if count == 0:
        raise ValueError("int8 export needs calibration images; none were given")
    return convert_pt2e(prepared)


def write_executorch(
    module: nn.Module,
    path: str | os.PathLike,
    example: Tensor,
    metadata: Mapping[str, Any],
    dynamic_shapes: Sequence[Mapping[int, Any]] | None = None,
    quantize: str | None = None,
    calibration: Iterable[Tensor] | None = None,
) -> Path:
    """Export ``module`` (one input, ``images``) to an ExecuTorch program lowered to XNNPACK and
    write it to ``path`` with ``metadata`` in :func:`sidecar_path`. ``quantize``: ``None`` (float32) or
    ``"int8"`` (``calibration`` yields input batches). Both files appear whole or not at all."""
    if quantize not in EXECUTORCH_FORMATS:
        raise ValueError(f"quantize must be one of {list(EXECUTORCH_FORMATS)}, got {quantize!r}")
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: PLC0415
    from executorch.exir import to_edge_transform_and_lower  # noqa: PLC0415

    module = module.eval()
    shapes = tuple(dynamic_shapes) if dynamic_shapes is not None else None
    with torch.no_grad(), warnings.catch_warnings():
        # torchao registers enums with pytree the old way; nothing this project can change.
        warnings.filterwarnings("ignore", message=".*register_constant.*")
        if quantize == "int8":
            module = _quantize_int8(module, example, calibration or [], shapes)
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path = atomic_write(path, lambda handle: handle.write(lowered.buffer))
    atomic_write(sidecar_path(path), lambda handle: handle.write(json.dumps(dict(metadata), indent=1).encode()))
    return path


def read_executorch_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The description written beside an ExecuTorch program by :func:`write_executorch`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ExecuTorch program")
    side = sidecar_path(path)
    if not side.is_file():
        raise ValueError(f"{path}: its description {side.name} is missing (export writes it beside the .pte)")
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{side}: not a readable description ({error})") from error


class ExecuTorchRunner:
    """Runs an ExecuTorch program whose input is ``images`` (1 x 3 x H x W: programs are exported for
    batch 1, as phones run them, so a batch runs image by image); returns CPU tensors.

    ``threads``: XNNPACK's thread pool size, which is process-wide in ExecuTorch's Python bindings."""

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, input_shape: Sequence[int] | None = None
    ) -> None:
        _require_executorch()
        from executorch.runtime import Runtime  # noqa: PLC0415

        if threads:
            from executorch.extension.pybindings import portable_lib  # noqa: PLC0415

            portable_lib._unsafe_reset_threadpool(int(threads))
        self.path = Path(path)
        try:
            program = Runtime.get().load_program(self.path)
        except Exception as error:  # the bindings raise RuntimeError with a numeric code only
            raise ValueError(f"{self.path}: not an ExecuTorch program ({error})") from error
        self.method = program.load_method("forward")
        # A program exported at a fixed size (the description's input_shape): other sizes are an
        # error naming both, not the runtime's numeric status code.
        self.input_shape = list(input_shape) if isinstance(input_shape, (list, tuple)) else None

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.input_shape and list(images.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"{self.path}: the program takes images of {self.input_shape[1:]} (exported at a fixed size); "
                f"got {list(images.shape[1:])}"
            )
        per_image = [self.method.execute((images[i : i + 1].contiguous().float(),)) for i in range(images.shape[0])]
        return tuple(torch.cat([outputs[k] for outputs in per_image]) for k in range(len(per_image[0])))
