"""What a task is outside training: preprocessing, the network as an exportable tensor function,
post-processing, output records, drawing and scoring against ground truth.

A :class:`Pipeline` runs on a *runner* (:mod:`.runners`) that computes the exported function: the
PyTorch export module (the network wrapped exactly as it is exported), an ONNX Runtime session or an
ExecuTorch program of the exported file. Pre- and post-processing are shared, so a model predicts
the same in PyTorch and from its export. What differs between tasks is decided by the task's
subclass, in its methods and class attributes, so that the tools (train, predict, export, quantize,
benchmark) need no per-task branches.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import ModelMeta
from ..models.normalization import InputNormalization, resolve_normalization
from .runners import ONNX_META_KEY, TorchRunner

__all__ = ["ExportedNetwork", "Pipeline"]

log = logging.getLogger(__name__)


class ExportedNetwork(nn.Module):
    """A network exported as it is (it normalises its own input): one module level above it, so
    that the graph's node names say which nodes are the network's (``/model/...``) and which the
    export's own (int8 quantisation keeps the latter in float)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


class Normalized(nn.Module):
    """A torchvision network that takes ImageNet-normalised input, as a function of [0, 1] images
    returning a tensor (segmentation models return ``{"out": ...}``), so that it is timed and
    exported doing the same work as ours."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.normalize = InputNormalization("imagenet")

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(self.normalize(images))
        return out["out"] if isinstance(out, dict) else out


def to_tensor(image: np.ndarray) -> Tensor:
    """H x W x 3 uint8 RGB -> 3 x H x W float32 in [0, 1] (a copy: images read from files are often
    read-only arrays, which torch would warn about)."""
    return torch.from_numpy(np.array(image, dtype=np.float32, copy=True)).permute(2, 0, 1).div_(255.0)


class Pipeline:
    """A trained model of one task, ready to use: ``pipeline(image)`` predicts.

    Subclasses define the task: :meth:`preprocess`, :meth:`export_module` (with
    :attr:`output_names`), :meth:`postprocess`, :meth:`records`, :meth:`draw`, :meth:`evaluate`.

    Args:
        meta: the model's description (from its checkpoint or export).
        model: the PyTorch network (eval mode), or ``None`` with ``runner`` given.
        runner: what computes the exported function; default the PyTorch export module.
        export_options: options of the export module (detection: ``nms``).
    """

    task: ClassVar[str]
    # configs/task/<config_name>.yaml trains this task's networks; the tools compose it for a
    # checkpoint of this task.
    config_name: ClassVar[str]
    # The metric of :meth:`evaluate` that a report of this task leads with.
    headline_metric: ClassVar[str]
    # Whether the network's builder takes the input size (detection computes its anchors for it):
    # running at another size then rebuilds the network, not only the preprocessing.
    builder_takes_image_size: ClassVar[bool] = False
    # What int8 quantisation leaves in float in this task's ONNX graph, for reports ("": nothing).
    quantization_note: ClassVar[str] = ""
    # Options of export_module / dynamic_axes this task takes (detection: ``nms``), and their values
    # for benchmarks, which time the network's own work.
    export_option_names: ClassVar[tuple[str, ...]] = ()
    benchmark_options: ClassVar[dict[str, Any]] = {}
    # Preprocessing a user may choose at inference (``preprocessing.<key>=``), with what each means;
    # they change how a photo is fitted to the network, not the network.
    preprocessing_settings: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        meta: ModelMeta,
        model: nn.Module | None = None,
        runner: Callable[[Tensor], tuple[Tensor, ...]] | None = None,
        device: str | torch.device = "cpu",
        **export_options: Any,
    ) -> None:
        if model is None and runner is None:
            raise ValueError("a pipeline needs a model or a runner")
        self.meta = meta
        self.model = model.eval() if model is not None else None
        self.export_options = export_options
        self.normalization = resolve_normalization(meta.normalization)
        self.runner = runner or TorchRunner(self.export_module(**export_options), device)

    # -- description ---------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        names = list(self.meta.class_names or [])
        count = self.num_classes
        if len(names) != count:
            names = [f"class_{i}" for i in range(count)]
        return names

    @property
    def num_classes(self) -> int:
        return int(self.meta.builder_args.get("num_classes") or len(self.meta.class_names or []))

    @classmethod
    def preprocessing(cls, builder_args: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
        """The preprocessing description stored in checkpoints and exports, from the builder
        arguments and what the data pipeline says about evaluation (``hints``)."""
        raise NotImplementedError

    @classmethod
    def options_from_training(cls, module_settings: Mapping[str, Any]) -> dict[str, Any]:
        """This task's pipeline options out of its training module's settings (a task config's
        ``module:``), so that a checkpoint is evaluated as its validation ran (segmentation:
        ``eval_scales``, ``eval_flip``)."""
        return {}

    @classmethod
    def evaluation_data_settings(cls, preprocessing: dict[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        """Settings of the evaluation ``data`` that a model of this ``preprocessing`` dictates
        (classification: the crop it was trained for)."""
        return {}

    @classmethod
    def working_size_of(cls, preprocessing: dict[str, Any]) -> int | None:
        """The size (pixels, the longer or only side) a description's model works at."""
        return (preprocessing.get("input_size") or [None])[0]

    @classmethod
    def hints_of(cls, preprocessing: dict[str, Any], size: int | None) -> dict[str, Any]:
        """The :meth:`preprocessing` hints that give back ``preprocessing`` at working size ``size``."""
        return {
            "image_size": size,
            "mode": preprocessing.get("mode"),
            "crop_fraction": preprocessing.get("crop_fraction", 0.875),
            "pad_to": preprocessing.get("pad_to"),
        }

    @classmethod
    def with_preprocessing(cls, meta: ModelMeta, settings: Mapping[str, Any], source: str) -> None:
        """Change ``meta.preprocessing`` by ``settings`` (keys of :attr:`preprocessing_settings`;
        ``None`` values keep the recorded one), logging what changed; unknown keys are an error."""
        settings = {key: value for key, value in settings.items() if value is not None}
        unknown = sorted(set(settings) - set(cls.preprocessing_settings))
        if unknown:
            known = ", ".join(f"{k} ({v})" for k, v in cls.preprocessing_settings.items()) or "none"
            raise ValueError(f"{source}: preprocessing.{unknown[0]} is not a {cls.task} setting; settings: {known}")
        if not settings:
            return
        recorded = meta.preprocessing
        try:
            changed = cls.preprocessing(meta.builder_args, {**cls.hints_of(recorded, cls.working_size_of(recorded)), **settings})  # fmt: skip
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        said = [f"preprocessing.{k}={v} (recorded: {recorded.get(k)})" for k, v in settings.items() if recorded.get(k) != changed.get(k)]  # fmt: skip
        if said:
            log.info("%s: %s", source, ", ".join(said))
        unused = [f"preprocessing.{k}={v}" for k, v in settings.items() if k not in changed]
        if unused:
            log.warning("%s: %s changes nothing with mode=%s", source, ", ".join(unused), changed.get("mode"))
        meta.preprocessing = changed

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(builder={self.meta.builder}, classes={self.num_classes}, "
            f"input={self.meta.input_size or 'any size'}, normalization={self.normalization.name or 'custom'})"
        )

    # -- the three stages ----------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[Tensor, dict[str, Any]]:
        """One H x W x 3 uint8 RGB image -> (3 x h x w float tensor in [0, 1] as the network takes
        it, context that :meth:`postprocess` needs to map outputs back to the image)."""
        raise NotImplementedError

    def collate(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(tensors))

    def export_module(self, **options: Any) -> nn.Module:
        """The network as an exportable function: images N x 3 x H x W in [0, 1] -> a tuple of
        tensors named :meth:`output_names`."""
        raise NotImplementedError

    def output_names(self, **options: Any) -> list[str]:
        raise NotImplementedError

    def postprocess(self, outputs: tuple[Tensor, ...], contexts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The runner's outputs for a batch -> one prediction per image, in that image's pixels."""
        raise NotImplementedError

    def run(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The network's outputs for a preprocessed batch (through the runner)."""
        return self.runner(batch)

    def predict(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 8) -> list[dict[str, Any]]:
        """Predictions for RGB uint8 images (one array or a list)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        results: list[dict[str, Any]] = []
        for start in range(0, len(images), batch_size):
            prepared = [self.preprocess(image) for image in images[start : start + batch_size]]
            outputs = self.run(self.collate([tensor for tensor, _ in prepared]))
            results += self.postprocess(outputs, [context for _, context in prepared])
        return results

    __call__ = predict

    # -- outputs a user sees -------------------------------------------------------------------

    def records(self, prediction: dict[str, Any], image: dict[str, Any]) -> list[dict[str, Any]]:
        """JSON records of one prediction; ``image`` holds ``id``, ``file`` and the size."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, prediction: dict[str, Any], **options: Any) -> dict[str, np.ndarray]:
        """Drawn pictures of a prediction, by file-name suffix (``{"": drawn}`` or several)."""
        raise NotImplementedError

    def extra_files(self, prediction: dict[str, Any]) -> dict[str, Callable[[Path], Any]]:
        """Files of a prediction besides the drawn pictures, by file-name suffix: a function that
        writes each to a path (segmentation: the mask)."""
        return {}

    def write_extra(self, folder: str | os.PathLike, stem: str, prediction: dict[str, Any]) -> list[Path]:
        """Write :meth:`extra_files` into ``folder`` as ``<stem><suffix>``; returns their paths."""
        paths = []
        for suffix, write in self.extra_files(prediction).items():
            path = Path(folder) / f"{stem}{suffix}"
            write(path)
            paths.append(path)
        return paths

    def summary(self, prediction: dict[str, Any], **options: Any) -> str:
        """One line for the log (``min_score``: detections counted from this score, as drawn)."""
        return ""

    # -- scoring -------------------------------------------------------------------------------

    def evaluate(self, dataset: Any, limit: int | None = None) -> dict[str, float]:
        """Metrics of this pipeline on a dataset of this project (its validation split)."""
        raise NotImplementedError

    def raw_image(self, dataset: Any, index: int) -> np.ndarray:
        """Image ``index`` of a dataset of this project, as it is on disk (RGB uint8)."""
        raise NotImplementedError

    def raw_images(self, dataset: Any) -> Iterator[np.ndarray]:
        for index in range(len(dataset)):
            yield self.raw_image(dataset, index)

    def calibration_batches(self, dataset: Any, count: int, seed: int = 0) -> Iterator[np.ndarray]:
        """Network inputs (1 x 3 x h x w float32) of ``count`` images drawn from ``dataset``, for
        int8 calibration."""
        for index in np.random.default_rng(seed).permutation(len(dataset))[:count]:
            tensor, _ = self.preprocess(self.raw_image(dataset, int(index)))
            yield self.collate([tensor]).numpy()

    # -- benchmarks ----------------------------------------------------------------------------

    # Classes and input size of torchvision's counterpart, so both sides of a benchmark predict as
    # many outputs from as many pixels.
    reference_classes: ClassVar[int]
    reference_size: ClassVar[int]

    @classmethod
    def reference(cls, image_size: int | None = None) -> tuple[str, nn.Module, int, int]:
        """torchvision's counterpart of this task's network, for benchmarks: its name, the network as
        an ``images in [0, 1] -> tensors`` function (as :meth:`export_module` makes ours), its
        parameter count and the input size it was made for (or ``image_size``). Random weights:
        speed does not depend on them."""
        raise NotImplementedError

    def export_options_from(self, settings: Any) -> dict[str, Any]:
        """This task's export options out of a settings mapping (a tool's ``export:`` config)."""
        return {name: settings[name] for name in self.export_option_names if name in settings}

    # -- export --------------------------------------------------------------------------------

    def example_input(self, batch: int = 2) -> Tensor:
        height, width = self.meta.input_size or (224, 224)
        return torch.rand(batch, 3, int(height), int(width))

    def dynamic_axes(self, **options: Any) -> dict[str, dict[int, str]]:
        axes = {"images": {0: "batch"}}
        for name in self.output_names(**options):
            axes[name] = {0: "batch"}
        return axes

    def onnx_metadata(self, **options: Any) -> dict[str, str]:
        """ONNX ``metadata_props``: the model's description, readable by any ONNX runtime."""
        meta = self.meta.as_dict()
        meta["export"] = {"outputs": self.output_names(**options), **options}
        return {
            ONNX_META_KEY: json.dumps(meta),
            "task": str(self.meta.task),
            "class_names": json.dumps(self.class_names),
            "category_ids": json.dumps(self.meta.category_ids),
            "input_size": json.dumps(self.meta.input_size),
            "input": "images: float32 N x 3 x H x W, RGB scaled to [0, 1] (pixel / 255); normalised inside",
            "normalization": json.dumps(self.normalization.as_dict()),
            "preprocessing": json.dumps(self.meta.preprocessing),
            "outputs": json.dumps(self.output_names(**options)),
        }

    def export_onnx(self, path: str | os.PathLike, opset: int = 17, **options: Any) -> Path:
        """Write the network as ONNX with dynamic batch (and the sizes :meth:`dynamic_axes` gives)
        and the model's description in ``metadata_props``. Returns the path."""
        from ..onnx_export import write_onnx  # noqa: PLC0415

        if self.model is None:
            raise ValueError("export needs the PyTorch model; this pipeline runs an exported file")
        options = {**self.export_options, **options}
        return write_onnx(
            self.export_module(**options),
            path,
            self.example_input(),
            self.output_names(**options),
            self.dynamic_axes(**options),
            self.onnx_metadata(**options),
            opset,
        )

    # -- on-device export (ExecuTorch, vision_mnv2.executorch_export) ---------------------------------------

    def fixed_size_options(self, height: int, width: int) -> dict[str, Any]:
        """Export options of a program that takes ``height`` x ``width`` images only (another
        runtime's fixed input); a network with an input size is exported at that size only."""
        if list(self.meta.input_size or []) != [int(height), int(width)]:
            raise ValueError(
                f"{self.meta.builder} takes {self.meta.input_size} images; it cannot be exported for {height} x {width}"
            )
        return {}

    def executorch_options(self, **options: Any) -> dict[str, Any]:
        """The export options an ExecuTorch program of this task is made with (detection: no NMS)."""
        return options

    def executorch_dynamic_shapes(self, **options: Any) -> tuple[dict[int, Any], ...] | None:
        """``torch.export`` dynamic shapes of the input; ``None``: the example's size only."""
        return None

    def executorch_metadata(self, quantize: str | None = None, **options: Any) -> dict[str, Any]:
        """The description written beside a ``.pte``: what :meth:`onnx_metadata` stores, as JSON."""
        meta = self.meta.as_dict()
        meta["export"] = {"outputs": self.output_names(**options), **options}
        meta["executorch"] = {
            "backend": "xnnpack",
            "precision": quantize or "float32",
            "input": "images: float32 1 x 3 x H x W, RGB scaled to [0, 1] (pixel / 255); normalised inside",
            "outputs": self.output_names(**options),
        }
        return meta

    def export_executorch(
        self,
        path: str | os.PathLike,
        quantize: str | None = None,
        calibration: Iterable[np.ndarray | Tensor] | None = None,
        **options: Any,
    ) -> Path:
        """Write the network as an ExecuTorch program lowered to XNNPACK (batch 1), in float32 or
        (``quantize="int8"``) int8 calibrated on ``calibration`` (input batches, as
        :meth:`calibration_batches` gives), with the model's description in ``<path>.json``."""
        from ..executorch_export import write_executorch  # noqa: PLC0415

        if self.model is None:
            raise ValueError("export needs the PyTorch model; this pipeline runs an exported file")
        # XNNPACK's lowering expects the weights in the default (NCHW) layout; a model made
        # channels-last for faster PyTorch inference goes back to it.
        self.model.to(memory_format=torch.contiguous_format)
        options = self.executorch_options(**{**self.export_options, **options})
        example = self.example_input(batch=1)
        dynamic_shapes = self.executorch_dynamic_shapes(**options)
        metadata = self.executorch_metadata(quantize, **options)
        # The size the program takes: fixed (the example's) unless dynamic shapes say otherwise.
        metadata["executorch"]["input_shape"] = "1 x 3 x H x W" if dynamic_shapes else list(example.shape)
        return write_executorch(
            self.export_module(**options), path, example, metadata, dynamic_shapes, quantize, calibration
        )


def iterate(items: Iterable[Any], limit: int | None) -> Iterator[Any]:
    for index, item in enumerate(items):
        if limit is not None and index >= limit:
            return
        yield item
