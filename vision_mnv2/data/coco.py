"""COCO-format detection data through pycocotools: ``instances_*.json`` + an image folder.

Labels inside the project are contiguous, ``1..K`` in the order of the category list sorted by id
(0 is the background of SSD); :attr:`CocoDetection.label_to_category_id` maps them back so that
results carry the dataset's own category ids.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .classification import DatasetError

__all__ = ["CocoDetection", "AnnotationStats", "load_coco_annotations"]

log = logging.getLogger(__name__)


@dataclass
class AnnotationStats:
    """What was done to annotations while reading them, so that nothing is lost silently."""

    kept: int = 0
    crowd: int = 0  # kept out of training targets, still used by evaluation
    clipped: int = 0  # partly outside the image, clipped to it
    dropped: int = 0  # zero size, or nothing left inside the image
    dropped_examples: list[str] = field(default_factory=list)


def load_coco_annotations(annotation_file: str | os.PathLike) -> COCO:
    """Read a COCO annotation JSON, turning pycocotools' assertion failures into clear errors."""
    path = Path(annotation_file).expanduser()
    if not path.is_file():
        raise DatasetError(f"annotation file {str(path)!r} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing lines
            coco = COCO(str(path))
    except Exception as exc:
        raise DatasetError(f"cannot read COCO annotation file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise DatasetError(f"COCO annotation file {str(path)!r} has no {key!r} list")
    return coco


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format dataset.

    Each item is ``(image, target)``: the image as an RGB ``uint8`` array (or what ``transform``
    makes of it) and a target with ``boxes`` (x0, y0, x1, y1 pixels, float32), ``labels`` (int64,
    1..K) and ``image_id``. Images without annotations are kept (they teach the background).

    Args:
        image_dir: folder of the images named in the annotation file.
        annotation_file: ``instances_*.json``.
        transform: ``transform(image, boxes, labels) -> (image, boxes, labels)`` applied jointly.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        transform: Callable[..., tuple[Any, np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder {str(self.image_dir)!r} does not exist")
        self.annotation_file = Path(annotation_file).expanduser()
        self.coco = load_coco_annotations(self.annotation_file)
        self.transform = transform
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
            log.warning(
                "%s: dropped %d degenerate boxes (e.g. %s), clipped %d",
                self.annotation_file, self.stats.dropped, "; ".join(self.stats.dropped_examples[:3]), self.stats.clipped,
            )

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def _read_target(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[image_id]
        width, height = info.get("width"), info.get("height")
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            where = f"annotation {ann.get('id')} of image {image_id} in {self.annotation_file}"
            category = ann.get("category_id")
            if category not in self.category_id_to_label:
                raise DatasetError(f"{where}: category_id {category!r} is not in the category list")
            bbox = ann.get("bbox")
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DatasetError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
            if ann.get("iscrowd", 0):
                self.stats.crowd += 1
                continue
            x, y, w, h = (float(v) for v in bbox)
            x0, y0, x1, y1 = x, y, x + w, y + h
            if width is not None and height is not None:
                cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
                cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
                if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1) and cx1 > cx0 and cy1 > cy0:
                    self.stats.clipped += 1
                x0, y0, x1, y1 = cx0, cy0, cx1, cy1
            if x1 - x0 < 1.0 or y1 - y0 < 1.0:
                self.stats.dropped += 1
                self.stats.dropped_examples.append(f"{where}: bbox {bbox}")
                continue
            boxes.append((x0, y0, x1, y1))
            labels.append(self.category_id_to_label[category])
            self.stats.kept += 1
        return (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> np.ndarray:
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        if not path.is_file():
            raise DatasetError(f"image {str(path)!r} named in {self.annotation_file} does not exist")
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"cannot decode image {str(path)!r}: {exc}") from exc

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
