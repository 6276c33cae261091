"""On-device export: ExecuTorch programs (``.pte``) lowered to the XNNPACK backend, in float32 or int8.

ExecuTorch rather than LiteRT (litert-torch): litert-torch pins ``torch<2.15`` and cannot be installed
beside this project's torch, while ExecuTorch takes ``torch.export`` graphs of the same torch. The
program runs on Android, iOS and Linux through ExecuTorch's runtime, and here through its Python
bindings (:class:`vision_mnv2.pipelines.runners.ExecuTorchRunner`), so the same pipelines predict from it.

A ``.pte`` holds no free-form metadata, so the model's description (what ONNX exports keep in
``metadata_props``) travels beside it as JSON, ``<file>.pte.json``; :func:`read_executorch_meta` reads it.
The description records the size and SHA-256 of the program it was written with, so that a program
and a description that were copied or replaced separately are refused by name (the runtime would
load them and fail on the first image with a numeric status code).

int8 is XNNPACK's post-training static quantisation through PT2E (torchao): symmetric int8 weights
per output channel (depthwise convolutions have few weights per channel, and per-tensor scales ruin
them), int8 activations with ranges observed on calibration images, lowered to XNNPACK's integer
kernels.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
    "ExecuTorchError",
    "executorch_available",
    "read_executorch_meta",
    "require_executorch",
    "sidecar_path",
    "write_executorch",
]

# Values of ``quantize``: none (float32) or XNNPACK's int8.
EXECUTORCH_FORMATS = (None, "int8")


class ExecuTorchError(ValueError):
    """A program that does not go with its description, or that failed on an input; the message
    names the file(s) and says what to do."""


class _DropPytreeNotice(logging.Filter):
    # torchao (imported by ExecuTorch) registers enums with torch's pytree the old way, and torch
    # logs a deprecation for each, on every import: nothing a user of this project can change.
    def filter(self, record: logging.LogRecord) -> bool:
        return "register_constant() on Enum subclasses is deprecated" not in str(record.msg)


_PYTREE_NOTICE = _DropPytreeNotice()


def executorch_available() -> bool:
    pytree_log = logging.getLogger("torch.utils._pytree")
    if _PYTREE_NOTICE not in pytree_log.filters:
        pytree_log.addFilter(_PYTREE_NOTICE)
    try:
        import executorch.exir  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def require_executorch() -> None:
    """Raise an ImportError saying what to install when ExecuTorch is not installed."""
    if not executorch_available():
        raise ImportError(
            "ExecuTorch export needs the `executorch` package: pip install 'vision-mnv2[mobile]' (or executorch>=1.0)"
        )


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the description of the program at ``path`` is kept: ``<file>.pte.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _program_identity(content: bytes) -> dict[str, Any]:
    """What identifies a program's file: its size and SHA-256 (recorded in its description)."""
    return {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    ``"int8"`` (``calibration`` yields input batches). Both files appear whole or not at all; the
    description records the program's size and SHA-256 (``"program"``), which reading it checks."""
    if quantize not in EXECUTORCH_FORMATS:
        raise ValueError(f"quantize must be one of {list(EXECUTORCH_FORMATS)}, got {quantize!r}")
    require_executorch()
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
    content = bytes(lowered.buffer)
    description = {**metadata, "program": {"file": Path(path).name, **_program_identity(content)}}
    path = atomic_write(path, lambda handle: handle.write(content), kind="ExecuTorch program")
    atomic_write(
        sidecar_path(path),
        lambda handle: handle.write(json.dumps(description, indent=1).encode()),
        kind="ExecuTorch program description",
    )
    return path


def read_executorch_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The description written beside an ExecuTorch program by :func:`write_executorch`, checked
    against the program (size and SHA-256; descriptions written before they were recorded are
    taken as they are). Raises :class:`ExecuTorchError` when it describes another program."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ExecuTorch program")
    side = sidecar_path(path)
    if not side.is_file():
        raise ValueError(f"{path}: its description {side.name} is missing (export writes it beside the .pte)")
    try:
        description = json.loads(side.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{side}: not a readable description ({error})") from error
    recorded = description.get("program") if isinstance(description, dict) else None
    if isinstance(recorded, dict) and "sha256" in recorded:
        size = path.stat().st_size
        # The size first: a different one needs no hashing.
        if size != recorded.get("bytes") or _file_sha256(path) != recorded["sha256"]:
            raise ExecuTorchError(
                f"{side} describes another program than {path}: it was written with "
                f"{recorded.get('file', 'a program')} of {recorded.get('bytes')} bytes (sha256 "
                f"{str(recorded['sha256'])[:12]}...), this file has {size} bytes"
                + ("" if size != recorded.get("bytes") else " and other content")
                + "; the two were copied or replaced separately. Export again (tools/export.py ... "
                "export.format=executorch), which writes both together"
            )
    return description
