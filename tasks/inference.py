"""``tools/predict.py`` and ``tools/export.py``: a checkpoint's model on images, or as an ONNX file.

Everything about the task lives in its pipeline (:mod:`vision_mnv2.pipelines`); these functions only
read the command's configuration, go through the images and write files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

from vision_mnv2.data import DatasetError, read_rgb
from vision_mnv2.data.sources import image_source

from .checkpoints import open_pipeline

log = logging.getLogger(__name__)

__all__ = ["predict", "export"]


def predict(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Run the checkpoint on ``cfg.input`` (an image, a folder, a COCO JSON or a VOC image list);
    write drawn images, ``predictions.json`` (COCO results for detection, with the input's image
    ids), ``images.json`` (id -> file) and, when images could not be read, ``skipped.json``, into
    ``cfg.output_dir`` (default: the run folder). Returns the predictions' path."""
    images = image_source(cfg.input, cfg.get("images_dir"))  # before the model: a wrong path fails at once
    pipeline = open_pipeline(cfg, overrides)
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for number, ref in enumerate(images, start=1):
        try:
            image = read_rgb(ref.file)
        except DatasetError as error:
            if not cfg.get("skip_bad_images", True):
                raise
            skipped.append({"file": str(ref.file), "problem": str(error).removeprefix(f"{ref.file}: ")})
            log.warning("skipped %s", error)
            continue
        stem = f"{number:05d}_{ref.name}"
        (prediction,) = pipeline.predict(image)
        info = {"id": ref.id, "file": str(ref.file), "stem": stem, "height": image.shape[0], "width": image.shape[1]}
        index.append({"id": ref.id, "file_name": str(ref.file), "height": image.shape[0], "width": image.shape[1]})
        results += pipeline.records(prediction, info)
        for suffix, drawn in pipeline.draw(
            image, prediction, min_score=float(cfg.get("draw_score_thresh", 0.3))
        ).items():
            Image.fromarray(drawn).save(out_dir / f"{stem}{suffix}", quality=92)
        pipeline.write_extra(out_dir, stem, prediction)
        log.info("%s: %s", ref.file.name, pipeline.summary(prediction))
    output = out_dir / "predictions.json"
    output.write_text(json.dumps(results, indent=1))
    (out_dir / "images.json").write_text(json.dumps(index, indent=1))
    if skipped:
        (out_dir / "skipped.json").write_text(json.dumps(skipped, indent=1))
    done = len(images) - len(skipped)
    message = f"predictions for {done} image(s) written to {out_dir}"
    if skipped:
        listing = "; ".join(f"{s['file']}: {s['problem']}" for s in skipped[:5])
        message += f"; {len(skipped)} image(s) could not be read and were skipped (listed in skipped.json): {listing}"
        if len(skipped) > 5:
            message += ", ..."
    log.info(message)
    return output


def export(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Write the checkpoint's network as ONNX (``cfg.export.file``, default
    ``<run folder>/<builder>.onnx``) with its description in the file's metadata."""
    options = cfg.get("export") or {}
    pipeline = open_pipeline(cfg, overrides)
    task_options = pipeline.export_options_from(options)
    target = Path(options.get("file") or Path(cfg.paths.output_dir) / f"{pipeline.meta.builder}.onnx")
    path = pipeline.export_onnx(target, opset=int(options.get("opset", 17)), **task_options)
    size = pipeline.meta.input_size
    print(
        f"exported the {pipeline.task} model ({pipeline.num_classes} classes, input "
        f"{'x'.join(map(str, size)) if size else 'any size'}) to {path}"
    )
    return path
