"""COCO-format detection data through pycocotools: ``instances_*.json`` + an image folder.

Labels inside the project are contiguous, ``1..K`` in the order of the category list sorted by id
(0 is the background of SSD); :attr:`CocoDetection.label_to_category_id` maps them back so that
results carry the dataset's own category ids.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .checks import BadSamples, DatasetError, check_image_files
from .classification import read_rgb

__all__ = ["CocoDetection", "AnnotationStats", "read_coco_json", "screen_coco_entries"]

log = logging.getLogger(__name__)


@dataclass
class AnnotationStats:
    """What was done to annotations while reading them, so that nothing is lost silently."""

    kept: int = 0
    crowd: int = 0  # kept out of training targets, still used by evaluation
    clipped: int = 0  # partly outside the image, clipped to it
    dropped: int = 0  # less than a pixel wide or high once clipped (valid, but nothing to learn)
    dropped_examples: list[str] = field(default_factory=list)


# Keys every entry must have, with their JSON types (bool is excluded from numbers below).
_REQUIRED = {
    "images": {"id": int, "file_name": str},
    "annotations": {"id": int, "image_id": int, "category_id": int, "bbox": list},
    "categories": {"id": int, "name": str},
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _entry_problem(entry: Any, kind: str) -> str | None:
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    for key, expected in _REQUIRED[kind].items():
        if key not in entry:
            return f"has no {key!r}"
        value = entry[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            return f"{key!r} must be a {expected.__name__}, got {value!r}"
    return None


def read_coco_json(annotation_file: str | os.PathLike) -> dict:
    """The annotation file's JSON, checked for what cannot be skipped: valid JSON, the three lists,
    well-formed categories and unique ids."""
    path = Path(annotation_file).expanduser()
    if not path.is_file():
        raise DatasetError(f"annotation file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not a valid JSON file ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in _REQUIRED:
        if key not in data:
            raise DatasetError(f"COCO annotation file {str(path)!r} has no {key!r} list")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list, got a JSON {type(data[key]).__name__}")
    for index, category in enumerate(data["categories"]):
        problem = _entry_problem(category, "categories")
        if problem:
            raise DatasetError(f"{path}: categories[{index}] {problem}")
    for kind in ("images", "categories"):
        ids = [entry["id"] for entry in data[kind] if isinstance(entry, dict) and "id" in entry]
        if len(ids) != len(set(ids)):
            raise DatasetError(f"{path}: {kind} ids are not unique")
    return data


def _bbox_problem(bbox: list, width: Any, height: Any) -> str | None:
    if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox must be [x, y, width, height] numbers, got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has zero or negative size"
    if _is_number(width) and _is_number(height) and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        return f"bbox {bbox} lies outside the {width}x{height} image"
    return None


def screen_coco_entries(data: dict, bad: BadSamples) -> dict:
    """Images and annotations of ``data`` without the malformed ones, which go into ``bad``:
    entries missing keys or of the wrong type, annotations of unknown images or categories, boxes
    of zero or negative size or outside their image."""
    images, rejected = [], set()
    for index, image in enumerate(data["images"]):
        problem = _entry_problem(image, "images")
        if problem is None:
            for key in ("width", "height"):
                if key in image and not (_is_number(image[key]) and image[key] > 0):
                    problem = f"{key!r} must be a positive number, got {image[key]!r}"
        if problem:
            bad.add(f"images[{index}]", problem)
            if isinstance(image, dict) and isinstance(image.get("id"), int):
                rejected.add(image["id"])  # its annotations go with it, not counted again
        else:
            images.append(image)
    known_images = {image["id"]: image for image in images}
    category_ids = {category["id"] for category in data["categories"]}
    annotations = []
    for index, ann in enumerate(data["annotations"]):
        problem = _entry_problem(ann, "annotations")
        where = f"annotations[{index}]"
        if problem is None:
            where = f"annotation {ann['id']} of image {ann['image_id']}"
            image = known_images.get(ann["image_id"])
            if ann["image_id"] in rejected:
                continue
            if image is None:
                problem = f"image_id {ann['image_id']} is not in the image list"
            elif ann["category_id"] not in category_ids:
                problem = f"category_id {ann['category_id']!r} is not in the category list"
            else:
                problem = _bbox_problem(ann["bbox"], image.get("width"), image.get("height"))
        if problem:
            bad.add(where, problem)
        else:
            annotations.append(ann)
    return {**data, "images": images, "annotations": annotations}


def index_coco(data: dict) -> COCO:
    """A pycocotools ``COCO`` over already-checked data (no second read of the file)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format dataset.

    Each item is ``(image, target)``: the image as an RGB ``uint8`` array (or what ``transform``
    makes of it) and a target with ``boxes`` (x0, y0, x1, y1 pixels, float32), ``labels`` (int64,
    1..K) and ``image_id``. Images without annotations are kept: under TF's
    recipe (``head=ssdlite_tf``) their hardest anchors teach the background; the default's per-image 3:1
    mining takes no negatives from an image without positives, so there they add no loss.

    Everything is checked when the dataset is built: the JSON (:func:`read_coco_json`,
    :func:`screen_coco_entries`) and every image file (exists, decodes, has the size the JSON
    gives). Bad samples raise one :class:`DatasetError` listing them, or with ``skip_bad`` are left
    out (an image with everything annotated on it; an annotation alone), counted in :attr:`bad`
    and logged. Boxes partly outside their image are clipped to it; boxes under a pixel once
    clipped are dropped (:attr:`stats`).

    Args:
        image_dir: folder of the images named in the annotation file.
        annotation_file: ``instances_*.json``.
        transform: ``transform(image, boxes, labels) -> (image, boxes, labels)`` applied jointly.
        skip_bad: skip bad samples instead of raising.
        check_images: ``"quick"``, ``"full"`` or ``"none"`` (see :mod:`vision_mnv2.data.checks`).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transform: Callable[..., tuple[Any, np.ndarray, np.ndarray]] | None = None,
        skip_bad: bool = False,
        check_images: str = "quick",
    ) -> None:
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder {str(self.image_dir)!r} does not exist")
        self.annotation_file = Path(annotation_file).expanduser()
        self.transform = transform
        data = read_coco_json(self.annotation_file)
        self.bad = BadSamples(str(self.annotation_file), skip_bad)
        data = screen_coco_entries(data, self.bad)
        data = self._screen_image_files(data, check_images)
        self.bad.resolve()
        self.coco = index_coco(data)
        self.category_ids = sorted(self.coco.getCatIds())
        if not self.category_ids:
            raise DatasetError(f"{self.annotation_file}: the category list is empty")
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        self.class_names = [self.coco.cats[cid]["name"] for cid in self.category_ids]
        self.image_ids = sorted(self.coco.getImgIds())
        if not self.image_ids:
            raise DatasetError(f"{self.annotation_file}: the dataset has no images")
        self.stats = AnnotationStats()
        self._targets = {image_id: self._read_target(image_id) for image_id in self.image_ids}
        if self.stats.dropped:
            log.info(
                "%s: dropped %d boxes under a pixel once clipped (e.g. %s), clipped %d",
                self.annotation_file,
                self.stats.dropped,
                "; ".join(self.stats.dropped_examples[:3]),
                self.stats.clipped,
            )

    def _screen_image_files(self, data: dict, check: str) -> dict:
        """Drop images whose file is missing, unreadable or of another size than the JSON says
        (into :attr:`bad`), with their annotations."""
        images = data["images"]
        results = check_image_files([self.image_dir / image["file_name"] for image in images], check)
        kept = []
        for image, (problem, size) in zip(images, results):
            expected = (image.get("width"), image.get("height"))
            if problem is None and size is not None and None not in expected and tuple(size) != expected:
                problem = f"image is {size[0]}x{size[1]} but the annotation file gives {expected[0]}x{expected[1]}"
            if problem:
                self.bad.add(self.image_dir / image["file_name"], f"{problem} (image {image['id']})")
            else:
                kept.append(image)
        kept_ids = {image["id"] for image in kept}
        annotations = [ann for ann in data["annotations"] if ann["image_id"] in kept_ids]
        return {**data, "images": kept, "annotations": annotations}

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def _read_target(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[image_id]
        width, height = info.get("width"), info.get("height")
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.stats.crowd += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x0, y0, x1, y1 = x, y, x + w, y + h
            if width is not None and height is not None:
                cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
                cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
                if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                    self.stats.clipped += 1
                x0, y0, x1, y1 = cx0, cy0, cx1, cy1
            if x1 - x0 < 1.0 or y1 - y0 < 1.0:
                self.stats.dropped += 1
                self.stats.dropped_examples.append(f"annotation {ann['id']} of image {image_id}: bbox {ann['bbox']}")
                continue
            boxes.append((x0, y0, x1, y1))
            labels.append(self.category_id_to_label[ann["category_id"]])
            self.stats.kept += 1
        return (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> np.ndarray:
        return read_rgb(self.image_dir / self.coco.imgs[image_id]["file_name"])

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        boxes, labels = self._targets[image_id]
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "image_id": torch.tensor(image_id),
        }
        return image, target
