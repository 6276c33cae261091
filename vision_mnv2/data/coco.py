"""COCO-format detection data through pycocotools: ``instances_*.json`` + an image folder.

Labels inside the project are contiguous, ``1..K`` in the order of the category list sorted by id
(0 is the background of SSD); :attr:`CocoDetection.label_to_category_id` maps them back so that
results carry the dataset's own category ids.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import logging
import os
import time
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

_EXAMPLES = 20  # dropped boxes quoted in AnnotationStats


@dataclass
class AnnotationStats:
    """What was done to annotations while reading them, so that nothing is lost silently."""

    kept: int = 0
    crowd: int = 0  # kept out of training targets, still used by evaluation
    clipped: int = 0  # partly outside the image, clipped to it
    dropped: int = 0  # less than a pixel wide or high once clipped (valid, but nothing to learn)
    dropped_examples: list[str] = field(default_factory=list)  # the first few


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
    collecting = gc.isenabled()
    # COCO's file is ~20M Python objects, made in one call and none of them garbage: without this
    # the collector re-scans the growing heap again and again while they are made (~30% of the load).
    gc.disable()
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not a valid JSON file ({error})") from None
    finally:
        if collecting:
            gc.enable()
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


def _image_problem(image: Any) -> str | None:
    problem = _entry_problem(image, "images")
    if problem is None:
        for key in ("width", "height"):
            if key in image and not (_is_number(image[key]) and image[key] > 0):
                problem = f"{key!r} must be a positive number, got {image[key]!r}"
    return problem


_REJECTED = object()  # an annotation of a rejected image: left out with it, not counted again


def _annotation_problem(ann: Any, index: int, known_images: dict, category_ids: set, rejected: set):
    """(where, problem) of one annotation: problem ``None`` if it is good, ``_REJECTED`` if its
    image was rejected."""
    problem = _entry_problem(ann, "annotations")
    if problem is not None:
        return f"annotations[{index}]", problem
    where = f"annotation {ann['id']} of image {ann['image_id']}"
    image = known_images.get(ann["image_id"])
    if ann["image_id"] in rejected:
        return where, _REJECTED
    if image is None:
        return where, f"image_id {ann['image_id']} is not in the image list"
    if ann["category_id"] not in category_ids:
        return where, f"category_id {ann['category_id']!r} is not in the category list"
    return where, _bbox_problem(ann["bbox"], image.get("width"), image.get("height"))


class _SlowPath(Exception):
    """The vectorised screening cannot read this file's columns; entries are screened one by one."""


_MISSING = object()


def _odd_types(column: list, types: tuple[type, ...]) -> np.ndarray | None:
    """Mask of the entries whose type is not one of ``types`` (bool is not int here), or ``None``
    when there is none: the common case costs one pass in C."""
    if set(map(type, column)) <= set(types):
        return None
    return np.fromiter((type(value) not in types for value in column), bool, len(column))


def _int_array(column: list, odd: np.ndarray | None) -> np.ndarray:
    if odd is not None:
        column = [0 if bad else value for value, bad in zip(column, odd)]
    try:
        return np.fromiter(column, np.int64, len(column))
    except OverflowError:
        raise _SlowPath from None


def _number_array(column: list) -> np.ndarray:
    """Optional positive numbers (width, height): NaN where missing; ``_MISSING``-free input."""
    return np.fromiter((np.nan if value is _MISSING else value for value in column), np.float64, len(column))


def _screen_images(images: list, bad: BadSamples) -> tuple[list[int], set]:
    """Indices of the good image entries; ids of the rejected ones."""
    suspect = np.zeros(len(images), bool)
    try:
        if _odd_types(images, (dict,)) is not None:
            raise _SlowPath
        for key, types in (("id", (int,)), ("file_name", (str,))):
            odd = _odd_types([image.get(key, _MISSING) for image in images], types)
            if odd is not None:
                suspect |= odd
        for key in ("width", "height"):
            column = [image.get(key, _MISSING) for image in images]
            odd = _odd_types(column, (int, float, type(_MISSING)))
            if odd is not None:
                suspect |= odd
                column = [_MISSING if bad else value for value, bad in zip(column, odd)]
            values = _number_array(column)
            with np.errstate(invalid="ignore"):
                suspect |= ~np.isnan(values) & ~(np.isfinite(values) & (values > 0))
    except _SlowPath:
        suspect[:] = True
    kept, rejected = [], set()
    for index in range(len(images)):
        problem = _image_problem(images[index]) if suspect[index] else None
        if problem:
            bad.add(f"images[{index}]", problem)
            image = images[index]
            if isinstance(image, dict) and isinstance(image.get("id"), int):
                rejected.add(image["id"])  # its annotations go with it, not counted again
        else:
            kept.append(index)
    return kept, rejected


def _screen_annotations(data: dict, images: list, rejected: set, bad: BadSamples):
    """Indices of the good annotations of ``data`` (on the kept ``images``), and their ``id``,
    ``image_id``, ``category_id`` and ``bbox`` columns as arrays when the column checks read them."""
    annotations = data["annotations"]
    category_ids = {category["id"] for category in data["categories"]}
    count = len(annotations)
    suspect = np.zeros(count, bool)
    try:
        if _odd_types(annotations, (dict,)) is not None:
            raise _SlowPath
        ids = {}
        for key in ("id", "image_id", "category_id"):
            column = [ann.get(key, _MISSING) for ann in annotations]
            odd = _odd_types(column, (int,))
            if odd is not None:
                suspect |= odd
            ids[key] = _int_array(column, odd)
        boxes = [ann.get("bbox", _MISSING) for ann in annotations]
        odd = _odd_types(boxes, (list,))
        if odd is None and set(map(len, boxes)) == {4}:
            odd = _odd_types([value for box in boxes for value in box], (int, float))
            if odd is not None:
                odd = odd.reshape(-1, 4).any(axis=1)
        else:
            odd = np.fromiter(
                (
                    type(box) is not list or len(box) != 4 or not all(type(v) in (int, float) for v in box)
                    for box in boxes
                ),
                bool,
                count,
            )
        if odd is not None:
            suspect |= odd
            boxes = [[np.nan] * 4 if bad else box for box, bad in zip(boxes, odd)]
        bbox = np.fromiter((value for box in boxes for value in box), np.float64, 4 * count).reshape(-1, 4)
    except _SlowPath:
        suspect[:] = True
        ids = None
    if not len(images):
        suspect[:] = True  # every annotation names an unknown (or rejected) image
    if not suspect.all():
        image_ids = np.fromiter((image["id"] for image in images), np.int64, len(images))
        order = np.argsort(image_ids)
        sizes = np.stack(
            [_number_array([images[i].get(key, _MISSING) for i in order]) for key in ("width", "height")], axis=1
        )
        at = np.minimum(np.searchsorted(image_ids[order], ids["image_id"]), len(images) - 1)
        suspect |= image_ids[order][at] != ids["image_id"]
        suspect |= ~np.isin(ids["category_id"], np.fromiter(category_ids, np.int64, len(category_ids)))
        x, y, w, h = bbox.T
        with np.errstate(invalid="ignore"):
            suspect |= ~np.isfinite(bbox).all(axis=1) | (w <= 0) | (h <= 0)
            width, height = sizes[at, 0], sizes[at, 1]
            outside = (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)
            suspect |= outside & ~np.isnan(width) & ~np.isnan(height)
    keep = ~suspect
    if suspect.any():
        known_images = {image["id"]: image for image in images}
        for index in np.flatnonzero(suspect).tolist():
            where, problem = _annotation_problem(annotations[index], index, known_images, category_ids, rejected)
            if problem is None:
                keep[index] = True
            elif problem is not _REJECTED:
                bad.add(where, problem)
    kept = np.flatnonzero(keep)
    if ids is None or (keep & suspect).any():  # columns with placeholders in kept rows
        return kept, None
    return kept, {**{key: column[kept] for key, column in ids.items()}, "bbox": bbox[kept]}


def _screen(data: dict, bad: BadSamples) -> tuple[dict, dict | None]:
    kept, rejected = _screen_images(data["images"], bad)
    images = [data["images"][index] for index in kept]
    kept, columns = _screen_annotations(data, images, rejected, bad)
    annotations = [data["annotations"][index] for index in kept.tolist()]
    return {**data, "images": images, "annotations": annotations}, columns


def screen_coco_entries(data: dict, bad: BadSamples) -> dict:
    """Images and annotations of ``data`` without the malformed ones, which go into ``bad``:
    entries missing keys or of the wrong type, annotations of unknown images or categories, boxes
    of zero or negative size or outside their image.

    Checked column by column in NumPy (COCO's 860k annotations in about a second); the entries a
    column check flags are checked again one by one, which names the problem."""
    return _screen(data, bad)[0]


def index_coco(data: dict) -> COCO:
    """A pycocotools ``COCO`` over already-checked data (no second read of the file)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _optional_numbers(entries: list[dict], key: str) -> np.ndarray:
    """``entry[key]`` of each entry, NaN where it is missing or not a number."""
    values = (entry.get(key) for entry in entries)
    return np.fromiter((v if type(v) in (int, float) else np.nan for v in values), np.float64, len(entries))


def _json_number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


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

    What the dataset keeps is NumPy arrays, not the JSON's dicts and lists: the training boxes of
    every image in one array (with per-image offsets), labels, file names in one byte string, and
    the annotations evaluation needs (:meth:`ground_truth`). Forked loader workers share those
    pages; millions of Python objects would be copied into every worker as their reference counts
    and the garbage collector touch them (COCO's JSON is ~2 GB of them).

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
        # Where set-up time goes, in CPU seconds of this process (tools/benchmarks/coco_scale.py).
        self.setup_cpu_seconds: dict[str, float] = {}
        clock = time.process_time()

        def phase(name: str) -> None:
            nonlocal clock
            now = time.process_time()
            self.setup_cpu_seconds[name] = now - clock
            clock = now

        data = read_coco_json(self.annotation_file)
        phase("JSON read")
        self.bad = BadSamples(str(self.annotation_file), skip_bad)
        data, columns = _screen(data, self.bad)
        phase("JSON entries screened")
        data, columns = self._screen_image_files(data, columns, check_images)
        phase("image files checked")
        self.bad.resolve()
        self.categories = [dict(category) for category in data["categories"]]
        self.category_ids = sorted(category["id"] for category in self.categories)
        if not self.category_ids:
            raise DatasetError(f"{self.annotation_file}: the category list is empty")
        self.category_id_to_label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.label_to_category_id = {label: cid for cid, label in self.category_id_to_label.items()}
        names = {category["id"]: category["name"] for category in self.categories}
        self.class_names = [names[cid] for cid in self.category_ids]
        self._index(data, columns)
        phase("arrays built")
        if not len(self.image_ids):
            raise DatasetError(f"{self.annotation_file}: the dataset has no images")
        if self.stats.dropped:
            log.info(
                "%s: dropped %d boxes under a pixel once clipped (e.g. %s), clipped %d",
                self.annotation_file,
                self.stats.dropped,
                "; ".join(self.stats.dropped_examples[:3]),
                self.stats.clipped,
            )

    def _screen_image_files(self, data: dict, columns: dict | None, check: str) -> tuple[dict, dict | None]:
        """Drop images whose file is missing, unreadable or of another size than the JSON says
        (into :attr:`bad`), with their annotations."""
        images = data["images"]
        folder = str(self.image_dir)
        results = check_image_files([os.path.join(folder, image["file_name"]) for image in images], check)
        kept = []
        for image, (problem, size) in zip(images, results):
            if problem is None and size is not None:
                expected = (image.get("width"), image.get("height"))
                if None not in expected and tuple(size) != expected:
                    problem = f"image is {size[0]}x{size[1]} but the annotation file gives {expected[0]}x{expected[1]}"
            if problem:
                self.bad.add(self.image_dir / image["file_name"], f"{problem} (image {image['id']})")
            else:
                kept.append(image)
        if len(kept) == len(images):
            return data, columns
        kept_ids = {image["id"] for image in kept}
        annotations = [ann for ann in data["annotations"] if ann["image_id"] in kept_ids]
        return {**data, "images": kept, "annotations": annotations}, None

    def _index(self, data: dict, columns: dict | None) -> None:
        """The arrays the dataset keeps (in image id order), from the screened entries and their
        columns where screening read them."""
        images = sorted(data["images"], key=lambda image: image["id"])
        self.image_ids = np.fromiter((image["id"] for image in images), np.int64, len(images))
        names = [image["file_name"].encode("utf-8", "surrogateescape") for image in images]
        self._names = b"".join(names)
        self._name_ends = np.cumsum(np.fromiter(map(len, names), np.int64, len(names)))
        self._sizes = np.stack([_optional_numbers(images, "width"), _optional_numbers(images, "height")], axis=1)

        # Every screened annotation, crowds included, as annotated: what evaluation scores against.
        annotations = data["annotations"]
        count = len(annotations)
        if columns is None:
            columns = {
                key: np.fromiter((a[key] for a in annotations), np.int64, count)
                for key in ("id", "image_id", "category_id")
            }
            columns["bbox"] = np.fromiter((v for a in annotations for v in a["bbox"]), np.float64, 4 * count)
        image_of = np.searchsorted(self.image_ids, columns["image_id"])
        order = np.argsort(image_of, kind="stable")  # grouped by image, file order within one
        self._ann_image = image_of[order]
        self._ann_ids = columns["id"][order]
        self._ann_category = columns["category_id"][order]
        self._ann_bbox = columns["bbox"].reshape(-1, 4)[order]
        self._ann_area = _optional_numbers(annotations, "area")[order]
        crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in annotations), bool, count)[order]
        self._ann_crowd = crowd if crowd.any() else None

        # Training targets: crowds left out, boxes clipped to their image, under a pixel dropped.
        x0, y0 = self._ann_bbox[:, 0], self._ann_bbox[:, 1]
        x1, y1 = x0 + self._ann_bbox[:, 2], y0 + self._ann_bbox[:, 3]
        boxes = np.stack([x0, y0, x1, y1], axis=1)
        size = self._sizes[self._ann_image]
        known = ~np.isnan(size).any(axis=1)
        clipped = boxes.copy()
        clipped[known] = np.clip(boxes[known], 0.0, np.tile(size[known], 2))
        changed = (clipped != boxes).any(axis=1) & ~crowd
        small = ((clipped[:, 2] - clipped[:, 0]) < 1.0) | ((clipped[:, 3] - clipped[:, 1]) < 1.0)
        dropped = small & ~crowd
        keep = ~crowd & ~small
        self.stats = AnnotationStats(
            kept=int(keep.sum()), crowd=int(crowd.sum()), clipped=int(changed.sum()), dropped=int(dropped.sum())
        )
        self.stats.dropped_examples = [
            f"annotation {a['id']} of image {a['image_id']}: bbox {a['bbox']}"
            for a in (annotations[i] for i in order[np.flatnonzero(dropped)[:_EXAMPLES]].tolist())
        ]
        self._boxes = clipped[keep].astype(np.float32)
        self._labels = np.searchsorted(self.category_ids, self._ann_category[keep]).astype(np.int64) + 1
        self._offsets = np.searchsorted(self._ann_image[keep], np.arange(len(images) + 1))

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, index: int) -> str:
        start = int(self._name_ends[index - 1]) if index else 0
        return self._names[start : int(self._name_ends[index])].decode("utf-8", "surrogateescape")

    def _position(self, image_id: int) -> int:
        index = int(np.searchsorted(self.image_ids, image_id))
        if index == len(self.image_ids) or self.image_ids[index] != image_id:
            raise KeyError(f"image id {image_id} is not in {self.annotation_file}")
        return index

    def target(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The training boxes (N x 4, x0 y0 x1 y1, float32) and labels (int64) of an image, copies."""
        index = self._position(image_id)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._boxes[start:end].copy(), self._labels[start:end].copy()

    def load_image(self, image_id: int) -> np.ndarray:
        return read_rgb(self.image_dir / self.file_name(self._position(image_id)))

    def ground_truth(self) -> dict[str, Any]:
        """The annotations as COCOeval scores them: a COCO-format dict of images (id, file name,
        size), annotations (crowd boxes included, each with its ``area`` and ``iscrowd``, boxes as
        annotated) and categories, once the set-up checks have left out what is malformed."""
        images = []
        for index, image_id in enumerate(self.image_ids.tolist()):
            image = {"id": image_id, "file_name": self.file_name(index)}
            width, height = self._sizes[index].tolist()
            if width == width and height == height:  # not NaN: the file gives them
                image.update(width=_json_number(width), height=_json_number(height))
            images.append(image)
        crowd = self._ann_crowd.astype(int).tolist() if self._ann_crowd is not None else [0] * len(self._ann_ids)
        annotations = []
        for ann_id, image, category, bbox, area, iscrowd in zip(
            self._ann_ids.tolist(), self.image_ids[self._ann_image].tolist(), self._ann_category.tolist(),
            self._ann_bbox.tolist(), self._ann_area.tolist(), crowd,
        ):  # fmt: skip
            ann = {"id": ann_id, "image_id": image, "category_id": category, "bbox": bbox, "iscrowd": iscrowd}
            if area == area:
                ann["area"] = area
            annotations.append(ann)
        return {"images": images, "annotations": annotations, "categories": [dict(c) for c in self.categories]}

    @functools.cached_property
    def coco(self) -> COCO:
        """A pycocotools ``COCO`` index of :meth:`ground_truth`, built when first asked for (for
        inspection; loading does not use it, and it is millions of Python objects on full COCO)."""
        return index_coco(self.ground_truth())

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        image_id = int(self.image_ids[index])
        image = read_rgb(self.image_dir / self.file_name(index))
        start, end = self._offsets[index], self._offsets[index + 1]
        boxes, labels = self._boxes[start:end].copy(), self._labels[start:end].copy()
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "image_id": torch.tensor(image_id),
        }
        return image, target
