"""What computes a pipeline's network, and the files it is exported to.

A :class:`~vision_mnv2.pipelines.Pipeline` runs on a *runner*: the PyTorch export module
(:class:`TorchRunner`), an ONNX Runtime session (:class:`OnnxRunner`) or an ExecuTorch program
(:class:`ExecuTorchRunner`); all three take a batch of images and return the same tensors. Each
export format (:data:`EXPORT_FORMATS`) says how a file of it is written, how its description is read
and which runner runs it, so that nothing outside this package tells the formats apart by suffix:
:func:`read_description` reads the description of any file of this project.

ExecuTorch's C++ runtime logs to the process's stderr (file descriptor 2) while it loads and runs a
program: CPU probing lines on every load, and on a failure the reason. :class:`ExecuTorchRunner`
catches those lines: the probing ones are dropped, a failure's reason goes into the error it raises,
anything else is passed on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import ModelMeta, read_checkpoint
from ..executorch_export import ExecuTorchError, read_executorch_meta, require_executorch, sidecar_path

__all__ = [
    "EXPORT_FORMATS",
    "ExecuTorchRunner",
    "ExportFormat",
    "OnnxRunner",
    "TorchRunner",
    "export_format",
    "read_description",
    "read_executorch_description",
    "read_onnx_meta",
]

# The key of this project's description among an ONNX file's metadata_props.
ONNX_META_KEY = "vision_mnv2"

Runner = Callable[[Tensor], tuple[Tensor, ...]]


class TorchRunner:
    """Runs a PyTorch tensor function (no gradients) on a device; returns CPU tensors."""

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.module(images.to(self.device))
        out = out if isinstance(out, tuple) else (out,)
        return tuple(t.cpu() for t in out)


class OnnxRunner:
    """Runs an ONNX Runtime session whose input is ``images``; returns CPU tensors."""

    def __init__(self, path_or_session: str | os.PathLike | Any, threads: int | None = None) -> None:
        if isinstance(path_or_session, (str, os.PathLike)):
            import onnxruntime as ort  # noqa: PLC0415

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            path_or_session = ort.InferenceSession(str(path_or_session), options, providers=["CPUExecutionProvider"])
        self.session = path_or_session
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images.numpy(), dtype=np.float32)})
        return tuple(torch.from_numpy(np.asarray(o)) for o in outputs)


def read_onnx_meta(path: str | os.PathLike) -> tuple[ModelMeta, dict[str, Any]]:
    """The model description and export options stored in an ONNX file written by this project."""
    import onnx  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError names neither the file nor what is wrong with it
        raise ValueError(
            f"{path}: not a readable ONNX file ({type(error).__name__}: {error}); export it again with tools/export.py"
        ) from None
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_META_KEY not in props:
        raise ValueError(f"{path}: not an ONNX export of this project (no {ONNX_META_KEY!r} metadata)")
    data = json.loads(props[ONNX_META_KEY])
    export = data.pop("export", {})
    return ModelMeta.from_dict(data), export


def read_executorch_description(path: str | os.PathLike) -> tuple[ModelMeta, dict[str, Any]]:
    """The model description and export options written beside an ExecuTorch program."""
    data = read_executorch_meta(path)
    if "task" not in data or "export" not in data:
        raise ValueError(f"{path}: its description is not one this project writes (no task / export)")
    export = data.pop("export")
    return ModelMeta.from_dict(data), export


# Lines ExecuTorch's runtime logs on every load that say nothing to act on: the CPU probing of its
# XNNPACK thread pool (files it cannot open on this CPU, a core count) and the pool's resizing.
_RUNTIME_NOISE = re.compile(rb"^\[(cpuinfo_utils|threadpool)\.cpp:\d+\] ")
# A runtime log line's source prefix, "[method.cpp:1243] ", left out when the line goes into a message.
_RUNTIME_SOURCE = re.compile(r"^\[[\w.]+:\d+\]\s*")


class _RuntimeLog:
    """What ExecuTorch's C++ runtime writes to stderr during :meth:`capture`, without its noise."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Redirects file descriptor 2 into a temporary file for the block (the runtime writes there
        directly, past ``sys.stderr``). On success the lines other than noise are written on to
        stderr; on an exception they are kept in :attr:`lines` for the error's message."""
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to filter
            yield
            return
        sys.stderr.flush()
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            failed = False
            try:
                yield
            except BaseException:
                failed = True
                raise
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()  # what Python wrote meanwhile is in the file too
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                self.lines = [
                    line for line in captured.read().splitlines(keepends=True) if not _RUNTIME_NOISE.match(line)
                ]
                if not failed and self.lines:
                    os.write(2, b"".join(self.lines))

    def reason(self) -> str:
        """The captured lines as one sentence (a failure's reason, as the runtime logged it)."""
        text = (line.decode("utf-8", "replace").strip() for line in self.lines)
        return "; ".join(_RUNTIME_SOURCE.sub("", line).rstrip(".") for line in text if line)


class ExecuTorchRunner:
    """Runs an ExecuTorch program whose input is ``images`` (1 x 3 x H x W: programs are exported for
    batch 1, as phones run them, so a batch runs image by image); returns CPU tensors.

    ``threads``: XNNPACK's thread pool size, which is process-wide in ExecuTorch's Python bindings."""

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, input_shape: Sequence[int] | None = None
    ) -> None:
        require_executorch()
        from executorch.runtime import Runtime  # noqa: PLC0415

        self.path = Path(path)
        log = _RuntimeLog()
        with log.capture():
            if threads:
                from executorch.extension.pybindings import portable_lib  # noqa: PLC0415

                portable_lib._unsafe_reset_threadpool(int(threads))
            try:
                program = Runtime.get().load_program(self.path)
            except Exception as error:  # the bindings raise RuntimeError with a numeric code only
                raise ValueError(f"{self.path}: not an ExecuTorch program ({error})") from error
            self.method = program.load_method("forward")
        # A program exported at a fixed size (the description's input_shape): other sizes are an
        # error naming both, not the runtime's numeric status code.
        self.input_shape = list(input_shape) if isinstance(input_shape, (list, tuple)) else None

    def _execute(self, image: Tensor) -> Sequence[Tensor]:
        log = _RuntimeLog()
        try:
            with log.capture():
                return self.method.execute((image,))
        except RuntimeError as error:  # "method->set_inputs() ... failed with error 0x10" and the like
            reason = log.reason()
            raise ExecuTorchError(
                f"{self.path}: the program failed on an input of shape {list(image.shape)}"
                + (f": {reason}" if reason else "")
                + f" ({error}). Programs take batch 1 and the size they were exported at unless exported "
                "with dynamic sizes; export again if the program does not go with this model"
            ) from error

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        if self.input_shape and list(images.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"{self.path}: the program takes images of {self.input_shape[1:]} (exported at a fixed size); "
                f"got {list(images.shape[1:])}"
            )
        per_image = [self._execute(images[i : i + 1].contiguous().float()) for i in range(images.shape[0])]
        return tuple(torch.cat([outputs[k] for outputs in per_image]) for k in range(len(per_image[0])))


def _open_executorch(path: Path, threads: int | None) -> ExecuTorchRunner:
    # A program exported at a fixed size says so in its description; the runner refuses other sizes by name.
    shape = read_executorch_meta(path).get("executorch", {}).get("input_shape")
    return ExecuTorchRunner(path, threads, shape)


@dataclass(frozen=True)
class ExportFormat:
    """A file format a pipeline's network is exported to."""

    name: str  # what export.format calls it
    suffix: str
    # Quantised to int8 when exported (ONNX graphs are quantised afterwards, by tools/quantize.py).
    int8_at_export: bool
    # The file's model description and export options.
    read: Callable[[Path], tuple[ModelMeta, dict[str, Any]]]
    # What runs the file: (path, threads) -> runner.
    open_runner: Callable[[Path, int | None], Runner]
    # Writes a pipeline's network: (pipeline, path, quantize, calibration, opset, options) -> path.
    write: Callable[..., Path]
    # Where the description is kept when not inside the file itself (ExecuTorch programs hold no metadata).
    description_file: Callable[[Path], Path] | None = None


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        "onnx",
        ".onnx",
        int8_at_export=False,
        read=read_onnx_meta,
        open_runner=OnnxRunner,
        write=lambda pipeline, path, quantize, calibration, opset, options: pipeline.export_onnx(
            path, opset=opset, **options
        ),
    ),
    "executorch": ExportFormat(
        "executorch",
        ".pte",
        int8_at_export=True,
        read=read_executorch_description,
        open_runner=_open_executorch,
        write=lambda pipeline, path, quantize, calibration, opset, options: pipeline.export_executorch(
            path, quantize, calibration, **options
        ),
        description_file=sidecar_path,
    ),
}


def export_format(path: str | os.PathLike) -> ExportFormat | None:
    """The export format of the file at ``path`` (by its suffix, any case); ``None`` for a checkpoint."""
    suffix = Path(path).suffix.lower()
    return next((f for f in EXPORT_FORMATS.values() if f.suffix == suffix), None)


def read_description(path: str | os.PathLike) -> ModelMeta:
    """The model description of any file of this project: a checkpoint, an ONNX export or an
    ExecuTorch program."""
    found = export_format(path)
    if found is None:
        return read_checkpoint(Path(path))[1]
    meta, _ = found.read(Path(path))
    return meta
