"""Prediction on a user's images and ONNX export, from a composed config and a checkpoint.
``tools/predict.py`` and ``tools/export.py`` call these; tests call them with composed configs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from PIL import Image

from vision_mnv2.data import DatasetError, classification_eval_transform, read_rgb
from vision_mnv2.data.segmentation_transforms import segmentation_eval_transform
from vision_mnv2.data.voc import write_mask
from vision_mnv2.export import export_onnx, fold_batch_norm
from vision_mnv2.models import load_weights, multi_scale_probabilities
from vision_mnv2.visualize import draw_detections, draw_mask_overlay

log = logging.getLogger(__name__)

__all__ = ["TASK_KINDS", "load_model", "predict", "export"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TASK_KINDS = {
    "tasks.classification.ClassificationTask": "classification",
    "tasks.detection.DetectionTask": "detection",
    "tasks.segmentation.SegmentationTask": "segmentation",
}


def task_kind(cfg: DictConfig) -> str:
    target = cfg.module._target_
    if target not in TASK_KINDS:
        raise ValueError(f"unknown task module {target!r}; expected one of {sorted(TASK_KINDS)}")
    return TASK_KINDS[target]


def load_model(cfg: DictConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of ``cfg`` with the weights of ``cfg.ckpt_path``, in eval mode, and the
    checkpoint's metadata (class names, category ids) when it has them."""
    if not cfg.get("ckpt_path"):
        raise ValueError("needs ckpt_path=PATH (a checkpoint written by tools/train.py)")
    ckpt = Path(cfg.ckpt_path).expanduser()
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist")
    with open_dict(cfg):
        # Every weight comes from the checkpoint; a pretrained file need not exist where one predicts.
        for key in ("weights", "backbone_weights"):
            if key in cfg.model:
                cfg.model[key] = None
    model = instantiate(cfg.model)
    load_weights(model, ckpt)
    meta = torch.load(ckpt, map_location="cpu", weights_only=True).get("vision_mnv2", {})
    model.eval()
    if cfg.get("fold_bn", True):
        fold_batch_norm(model)  # inference only: batch norm becomes part of each convolution
    if cfg.module.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    return model, meta


def _class_names(meta: dict, count: int, background: bool) -> list[str]:
    names = list(meta.get("class_names") or [])
    if len(names) == count:
        return names
    start = 0 if background else 1
    return [f"class_{i}" for i in range(start, start + count)]


def _images(path: str | Path) -> list[Path]:
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    raise DatasetError(f"input {str(path)!r} does not exist")


@torch.no_grad()
def predict(cfg: DictConfig) -> Path:
    """Run the checkpoint on ``cfg.input`` (an image or a folder) and write drawn images and one
    ``predictions.json`` into ``cfg.output_dir`` (default: the run folder). Returns the JSON path."""
    kind = task_kind(cfg)
    files = _images(cfg.input)  # before the model: a wrong path should fail at once
    model, meta = load_model(cfg)
    out_dir = Path(cfg.get("output_dir") or cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: Any = []
    images_index = []
    for index, path in enumerate(files, start=1):
        image = read_rgb(path)
        stem = f"{index:05d}_{path.stem}"
        if kind == "classification":
            transform = classification_eval_transform(cfg.data.image_size, cfg.data.get("crop_fraction", 0.875))
            probabilities = model(transform(image=image)["image"][None]).softmax(1)[0]
            names = _class_names(meta, probabilities.numel(), background=True)
            top = probabilities.topk(min(5, probabilities.numel()))
            entry = [
                {"label": int(i), "class": names[int(i)], "score": float(p)} for p, i in zip(top.values, top.indices)
            ]
            results.append({"file": str(path), "top5": entry})
            log.info("%s: %s", path.name, ", ".join(f"{e['class']} {e['score']:.3f}" for e in entry))
        elif kind == "detection":
            tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            (detection,) = model([tensor])
            names = _class_names(
                meta, len(meta.get("class_names") or []) or int(cfg.data.num_classes), background=False
            )
            category_ids = meta.get("category_ids") or list(range(1, len(names) + 1))
            images_index.append(
                {"id": index, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]}
            )
            for box, score, label in zip(detection["boxes"], detection["scores"], detection["labels"]):
                x0, y0, x1, y1 = (float(v) for v in box)
                results.append(
                    {
                        "image_id": index,
                        "category_id": int(category_ids[int(label) - 1]),
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "score": round(float(score), 5),
                    }
                )
            drawn = draw_detections(
                image, detection["boxes"], detection["scores"], detection["labels"], names, cfg.draw_score_thresh
            )
            Image.fromarray(drawn).save(out_dir / f"{stem}.jpg", quality=92)
        else:
            tensor = segmentation_eval_transform()(image=image)["image"][None]
            scales = [float(s) for s in cfg.module.get("eval_scales", [1.0])]
            mask = multi_scale_probabilities(model, tensor, scales, bool(cfg.module.get("eval_flip", False))).argmax(1)[
                0
            ]
            mask = mask.numpy().astype(np.uint8)
            names = _class_names(meta, model.num_classes, background=True)
            write_mask(out_dir / f"{stem}_mask.png", mask)
            Image.fromarray(draw_mask_overlay(image, mask, model.num_classes)).save(
                out_dir / f"{stem}_overlay.jpg", quality=92
            )
            counts = np.bincount(mask.ravel(), minlength=model.num_classes) / mask.size
            results.append(
                {
                    "file": str(path),
                    "mask": f"{stem}_mask.png",
                    "class_fraction": {names[c]: round(float(f), 5) for c, f in enumerate(counts) if f > 0},
                }
            )
    output = out_dir / "predictions.json"
    output.write_text(json.dumps(results, indent=1))
    if kind == "detection":
        # COCO results format keeps only image ids; this maps them to the files.
        (out_dir / "images.json").write_text(json.dumps(images_index, indent=1))
    log.info("predictions for %d images written to %s", len(files), out_dir)
    print(f"predictions for {len(files)} image(s) written to {out_dir}")
    return output


def export(cfg: DictConfig) -> Path:
    """Write the checkpoint's network as ONNX (``cfg.export_file``, default ``<run folder>/model.onnx``)."""
    kind = task_kind(cfg)
    model, _ = load_model(cfg)
    size = cfg.get("export_size") or cfg.data.image_size
    target = Path(cfg.get("export_file") or Path(cfg.paths.output_dir) / f"{cfg.task_name}.onnx")
    path = export_onnx(model, kind, target, int(size), opset=int(cfg.get("opset", 17)))
    print(f"exported {kind} model to {path}")
    return path
