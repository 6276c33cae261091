"""``tools/predict.py`` and ``tools/export.py``: a checkpoint's model on images, or as an ONNX file
or an ExecuTorch program.

Everything about the task lives in its pipeline (:mod:`vision_mnv2.pipelines`); these functions only
read the command's configuration, go through the images and write files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from vision_mnv2.data import DatasetError, read_rgb
from vision_mnv2.data.sources import image_source
from vision_mnv2.files import atomic_write_text
from vision_mnv2.pipelines import EXPORT_FORMATS
from vision_mnv2.visualize import save_picture

from .checkpoint_config import open_pipeline

log = logging.getLogger(__name__)

__all__ = ["predict", "export"]


# The list of files a prediction wrote into its output folder, each added before the file is
# written: a later prediction into the same folder removes exactly those (and nothing of the user's),
# even when the earlier one was killed half way.
PREDICT_MANIFEST = ".predict_files"


class PredictionOutputs:
    """The files one prediction writes into its folder, each whole or not at all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.manifest = folder / PREDICT_MANIFEST
        self._clear_earlier()
        self._listing = open(self.manifest, "a")  # noqa: SIM115  (kept open while predicting)

    def _clear_earlier(self) -> None:
        if not self.manifest.is_file():
            if (self.folder / "predictions.json").exists():
                raise FileExistsError(
                    f"output_dir {self.folder} holds predictions that do not list their files ({PREDICT_MANIFEST} "
                    "is missing), so they cannot be told from yours; give another output_dir or empty it"
                )
            return
        names = [line for line in self.manifest.read_text().splitlines() if line]
        removed = 0
        for name in names:
            path = self.folder / name
            if "/" not in name and path.is_file():  # only files this tool wrote, in this folder
                path.unlink()
                removed += 1
        self.manifest.unlink()
        if removed:
            log.info("removed the %d file(s) an earlier prediction wrote into %s", removed, self.folder)

    def _listed(self, name: str) -> Path:
        self._listing.write(name + "\n")
        self._listing.flush()
        return self.folder / name

    def picture(self, name: str, picture: np.ndarray) -> None:
        save_picture(self._listed(name), picture)

    def json(self, name: str, payload: Any) -> Path:
        return atomic_write_text(self._listed(name), json.dumps(payload, indent=1))

    def listed(self, name: str) -> Path:
        """The path of a file the caller writes itself (atomically)."""
        return self._listed(name)

    def close(self) -> None:
        self._listing.close()


def _too_large(error: BaseException) -> bool:
    """A failed allocation (a photo too large for this machine's memory), in any of its forms."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError)
        and any(s in str(error) for s in ("alloc", "out of memory", "DefaultCPUAllocator"))
    )


def predict(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Run the checkpoint on ``cfg.input`` (an image, a folder, a COCO JSON or a VOC image list);
    write drawn images, ``predictions.json`` (COCO results for detection, with the input's image
    ids), ``images.json`` (id -> file) and, when images could not be read, ``skipped.json``, into
    ``cfg.output_dir`` (default: the run folder). What an earlier prediction wrote into that folder
    is removed first. Returns the predictions' path."""
    images = image_source(cfg.input, cfg.get("images_dir"))  # before the model: a wrong path fails at once
    pipeline = open_pipeline(cfg, overrides)
    outputs = PredictionOutputs(Path(cfg.get("output_dir") or cfg.paths.output_dir))
    min_score = float(cfg.get("draw_score_thresh", 0.3))
    results: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        for number, ref in enumerate(images, start=1):
            try:
                image = read_rgb(ref.file)
                (prediction,) = pipeline.predict(image)
            except DatasetError as error:
                if not cfg.get("skip_bad_images", True):
                    raise
                skipped.append({"file": str(ref.file), "problem": str(error).removeprefix(f"{ref.file}: ")})
                log.warning("skipped %s", error)
                continue
            except (MemoryError, RuntimeError) as error:
                if not _too_large(error) or not cfg.get("skip_bad_images", True):
                    raise
                problem = "not enough memory to predict on it (" + str(error).splitlines()[0][:200] + ")"
                skipped.append({"file": str(ref.file), "problem": problem})
                log.warning("skipped %s: %s", ref.file, problem)
                continue
            stem = f"{number:05d}_{ref.name}"
            height, width = image.shape[:2]
            info = {"id": ref.id, "file": str(ref.file), "stem": stem, "height": height, "width": width}
            index.append({"id": ref.id, "file_name": str(ref.file), "height": height, "width": width})
            results += pipeline.records(prediction, info)
            for suffix, drawn in pipeline.draw(image, prediction, min_score=min_score).items():
                outputs.picture(f"{stem}{suffix}", drawn)
            for suffix, write in pipeline.extra_files(prediction).items():
                write(outputs.listed(f"{stem}{suffix}"))
            del image
            log.info("%s: %s", ref.file.name, pipeline.summary(prediction, min_score=min_score))
    finally:
        # Written even when a run stops half way: what was predicted is kept.
        output = outputs.json("predictions.json", results)
        outputs.json("images.json", index)
        if skipped:
            outputs.json("skipped.json", skipped)
        outputs.close()
    done = len(images) - len(skipped)
    message = f"predictions for {done} image(s) written to {outputs.folder}"
    if skipped:
        listing = "; ".join(f"{s['file']}: {s['problem']}" for s in skipped[:5])
        message += f"; {len(skipped)} image(s) could not be read and were skipped (listed in skipped.json): {listing}"
        if len(skipped) > 5:
            message += ", ..."
    log.info(message)
    return output


def calibration_images(cfg: DictConfig, pipeline: Any, overrides: list[str] | None = None) -> Iterator[Any]:
    """Network inputs for int8 calibration: ``cfg.export.calibration`` (an image, a folder, a COCO
    JSON or a VOC list) when given, else the checkpoint's training images, as tools/quantize.py takes them."""
    options = cfg.get("export") or {}
    count = int(options.get("calibration_images", 64))
    source = options.get("calibration")
    if source:
        refs = image_source(source)
        for index in np.random.default_rng(0).permutation(len(refs))[:count]:
            tensor, _ = pipeline.preprocess(read_rgb(refs[int(index)].file))
            yield pipeline.collate([tensor])
        return
    from hydra.utils import instantiate  # noqa: PLC0415

    from .checkpoint_config import evaluation_data  # noqa: PLC0415

    missing = "give int8 calibration images: export.calibration=IMAGES (a folder of photos like those it will see)"
    datamodule = instantiate(evaluation_data(cfg, pipeline.meta, overrides, missing=missing))
    datamodule.prepare_data()
    datamodule.setup("fit")
    for batch in pipeline.calibration_batches(datamodule.train_set, count):
        yield torch.from_numpy(batch)


def export(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Write the checkpoint's network (``cfg.export.file``, default ``<run folder>/<builder>.onnx``
    or ``.pte``) as ONNX with its description in the file's metadata, or (``export.format=executorch``)
    as an ExecuTorch program for XNNPACK, float32 or ``export.quantize=int8``, described in
    ``<file>.pte.json``."""
    options = cfg.get("export") or {}
    file_format = EXPORT_FORMATS.get(str(options.get("format") or "onnx").lower())
    if file_format is None:
        raise ValueError(f"export.format must be one of {sorted(EXPORT_FORMATS)}, got {options.get('format')!r}")
    quantize = options.get("quantize")
    if quantize is not None and (not file_format.int8_at_export or str(quantize).lower() != "int8"):
        raise ValueError(
            f"export.quantize={quantize!r}: int8 is available for export.format=executorch "
            "(ONNX graphs are quantised by tools/quantize.py)"
        )
    pipeline = open_pipeline(cfg, overrides)
    task_options = pipeline.export_options_from(options)
    default = Path(cfg.paths.output_dir) / f"{pipeline.meta.builder}{'_int8' if quantize else ''}{file_format.suffix}"
    target = Path(options.get("file") or default)
    calibration = calibration_images(cfg, pipeline, overrides) if quantize else None
    path = file_format.write(
        pipeline, target, "int8" if quantize else None, calibration, int(options.get("opset", 17)), task_options
    )
    size = pipeline.meta.input_size
    # A format whose description lives beside the file names it, and the precision, which the file does not show.
    described = file_format.description_file(path).name if file_format.description_file else None
    print(
        f"exported the {pipeline.task} model ({pipeline.num_classes} classes, input "
        f"{'x'.join(map(str, size)) if size else 'any size'}) to {path}"
        + (f" ({'int8' if quantize else 'float32'}, description in {described})" if described else "")
    )
    return path
