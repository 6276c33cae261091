"""Trained models ready to use: ``vision_mnv2.load(path)`` -> a :class:`Pipeline` of the model's task.

import vision_mnv2
from vision_mnv2.data import read_rgb

detector = vision_mnv2.load("outputs/ssdlite/<run>/checkpoints/last.ckpt")
(prediction,) = detector(read_rgb("photo.jpg"))   # boxes in the photo's pixels, scores, labels
detector.meta.class_names, detector.meta.preprocessing, detector.model   # what it is
detector.export_onnx("detector.onnx")              # NMS inside, description in the metadata
vision_mnv2.load("detector.onnx")(read_rgb("photo.jpg"))  # the same, in ONNX Runtime
detector.export_executorch("detector.pte", quantize="int8", calibration=batches)  # on-device, XNNPACK
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, ModelMeta, load_model
from .base import Pipeline
from .classification import ClassificationPipeline
from .detection import DetectionExportModule, DetectionPipeline
from .runners import (
    EXPORT_FORMATS,
    ExecuTorchRunner,
    ExportFormat,
    OnnxRunner,
    TorchRunner,
    export_format,
    read_description,
)
from .segmentation import SegmentationPipeline

__all__ = [
    "EXPORT_FORMATS",
    "INFERENCE_OPTIONS",
    "PIPELINES",
    "ClassificationPipeline",
    "DetectionExportModule",
    "DetectionPipeline",
    "ExecuTorchRunner",
    "ExportFormat",
    "OnnxRunner",
    "Pipeline",
    "SegmentationPipeline",
    "TorchRunner",
    "contradictions",
    "describe",
    "export_format",
    "load",
    "read_description",
]

log = logging.getLogger(__name__)

PIPELINES: dict[str, type[Pipeline]] = {
    "classification": ClassificationPipeline,
    "detection": DetectionPipeline,
    "segmentation": SegmentationPipeline,
}

# Builder arguments that may be set differently from the checkpoint when the model is used: the
# input size (detection rebuilds its anchors for it; the weights do not depend on it), post-processing
# and the memory-efficient path. Every other argument *is* the trained network.
INFERENCE_OPTIONS = frozenset(
    {"image_size", "expansion_groups", "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"}
)


def contradictions(meta: ModelMeta, given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(argument, given value, checkpoint's value)`` for every given builder argument that is not
    an inference option and differs from what the checkpoint's model was built with."""
    found = []
    for key, value in given.items():
        if key in INFERENCE_OPTIONS or key not in meta.builder_args:
            continue
        stored = meta.builder_args[key]
        if key == "normalization":
            from ..models.normalization import resolve_normalization  # noqa: PLC0415

            same = resolve_normalization(value) == resolve_normalization(stored)
        else:
            same = value == stored or (
                isinstance(stored, float) and isinstance(value, (int, float)) and float(value) == stored
            )
        if not same:
            found.append((key, value, stored))
    return found


def describe(task: str, model, hints: dict[str, Any] | None = None, **fields: Any) -> ModelMeta:
    """The full description of a freshly built or trained ``model``: its build configuration, the
    preprocessing of ``task`` (from the data's evaluation ``hints``), and ``fields`` (class names,
    category ids, training information)."""
    meta = ModelMeta.of_model(model, **fields)
    meta.preprocessing = PIPELINES[task].preprocessing(meta.builder_args, dict(hints or {}))
    return meta


def load(
    path: str | os.PathLike,
    task: str | None = None,
    device: str = "cpu",
    image_size: int | None = None,
    fold_bn: bool = True,
    threads: int | None = None,
    pipeline_options: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    **changes: Any,
) -> Pipeline:
    """Load a checkpoint (or an ONNX export) of this project into a ready :class:`Pipeline`.

    Args:
        path: a ``.ckpt`` / ``.pt`` checkpoint written by training, ``tools/convert.py`` or
            :func:`vision_mnv2.checkpoint.save_model`; or a ``.onnx`` / ``.pte`` (ExecuTorch, its
            description in ``<file>.pte.json``) file written by export.
        task: the task you expect; another one is an error naming both.
        image_size: run at another input size than the model was trained at (logged).
        fold_bn: fold batch norm into the convolutions (same outputs, faster; PyTorch only).
        pipeline_options: options of the task's pipeline (segmentation: ``scales``, ``flip``;
            detection: ``nms`` for the export module).
        preprocessing: preprocessing settings other than the recorded ones (classification:
            ``mode`` ``crop`` or ``resize``, ``crop_fraction``; logged); exports take them too.
        changes: builder arguments to change (post-processing thresholds, ``expansion_groups``);
            an argument that contradicts the trained network (``num_classes``, ``width_mult``, ...)
            is an error naming both values.
    """
    path = Path(path).expanduser()
    options = dict(pipeline_options or {})
    exported = export_format(path)
    if exported is not None:
        if changes or image_size:
            raise ValueError(f"{path}: an exported graph is fixed; changes {sorted(changes)} need the checkpoint")
        meta, export = exported.read(path)
        if task is not None and meta.task != task:
            raise CheckpointError(f"this export is a {meta.task} model; you asked for {task}: {path}")
        export.pop("outputs", None)
        PIPELINES[meta.task].with_preprocessing(meta, preprocessing or {}, str(path))
        runner = exported.open_runner(path, threads)
        return PIPELINES[meta.task](meta, runner=runner, **{**export, **options})

    from ..checkpoint import read_checkpoint  # noqa: PLC0415
    from ..onnx_export import fold_batch_norm  # noqa: PLC0415

    _, stored = read_checkpoint(path, task)
    found = contradictions(stored, changes)
    if found:
        raise CheckpointError(
            "; ".join(f"{key}={value!r} contradicts the checkpoint ({key}={old!r})" for key, value, old in found)
            + f": {path}"
        )
    changes = {k: v for k, v in changes.items() if k in INFERENCE_OPTIONS and v != stored.builder_args.get(k)}
    if image_size and PIPELINES[stored.task].builder_takes_image_size:
        changes["image_size"] = int(image_size)
    model, meta = load_model(path, task, **changes)
    pipeline_class = PIPELINES[meta.task]
    trained_size = pipeline_class.working_size_of(meta.preprocessing)
    resized = image_size is not None and int(image_size) != trained_size
    if resized:
        was = f"the {trained_size} px it was trained at" if trained_size else "images at their own size"
        log.info("%s: running at %d px instead of %s", path, int(image_size), was)
    if changes:
        log.info("%s: changed %s", path, ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    if changes or resized or not meta.preprocessing:
        size = int(image_size) if resized else trained_size
        meta.preprocessing = pipeline_class.preprocessing(
            meta.builder_args, pipeline_class.hints_of(meta.preprocessing, size)
        )
    pipeline_class.with_preprocessing(meta, preprocessing or {}, str(path))
    if fold_bn:
        fold_batch_norm(model)
    return pipeline_class(meta, model, device=device, **options)
