"""A two-class classification set cut out of a detection set: each photo gives one crop around an
object and one crop of background that touches no object. Real photos for checking how a
classifier fine-tunes when the only labelled photos at hand are a detection set's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .checks import DatasetError
from .classification import read_rgb

__all__ = ["write_object_background_crops"]


def _overlaps(box: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def write_object_background_crops(
    coco: dict,
    image_dir: str | os.PathLike,
    root: str | os.PathLike,
    train_images: int,
    margin: float = 0.1,
    seed: int = 0,
    object_name: str | None = None,
) -> Path:
    """Write ``root/{train,val}/{<object>,background}/*.jpg`` from a COCO-format detection dict:
    per image, its largest object with ``margin`` around it, and a square of about that size (down to
    a quarter of it, at least 48 px) placed where it overlaps no object (images where none fits give
    only the object crop). The first
    ``train_images`` images (by id) go to ``train``, the others to ``val``. Unreadable images are
    skipped."""
    rng = np.random.default_rng(seed)
    image_dir, root = Path(image_dir), Path(root)
    name = object_name or coco["categories"][0]["name"]
    by_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    images = sorted((image for image in coco["images"] if image["id"] in by_image), key=lambda image: image["id"])
    if len(images) <= train_images:
        raise DatasetError(f"{len(images)} images with objects, not enough for {train_images} training images")
    for number, image in enumerate(images):
        split = "train" if number < train_images else "val"
        try:
            pixels = read_rgb(image_dir / image["file_name"])
        except DatasetError:
            continue
        height, width = pixels.shape[:2]
        boxes = [(x, y, x + w, y + h) for x, y, w, h in by_image[image["id"]]]
        x0, y0, x1, y1 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        crop = (max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy))
        crops = {name: crop}
        side = min(max(x1 - x0, y1 - y0), width, height)
        for _ in range(200):
            # About the object's size, smaller where the objects fill the photo.
            size = max(48.0, side * rng.uniform(0.25, 1.0))
            if size > min(width, height):
                continue
            left, top = rng.uniform(0, width - size), rng.uniform(0, height - size)
            candidate = (left, top, left + size, top + size)
            if not _overlaps(candidate, boxes):
                crops["background"] = candidate
                break
        for label, (a, b, c, d) in crops.items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[int(b) : int(d), int(a) : int(c)]).save(
                folder / f"{image['id']:05d}.jpg", quality=95
            )
    return root
