"""What to predict on: an image, a folder, a COCO annotation file or a VOC image-set list.

Each gives :class:`ImageRef` entries in a fixed order with an id: the COCO file's own image ids
(so that detections written with them score directly with COCOeval against that file), the VOC
list's image ids, or 1, 2, ... for files and folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checks import DatasetError

__all__ = ["IMAGE_SUFFIXES", "ImageRef", "image_source"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageRef:
    """One image to predict on: its file, its id, and a name for output files."""

    file: Path
    id: int | str
    name: str


def _from_folder(folder: Path) -> list[ImageRef]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [ImageRef(path, index, path.stem) for index, path in enumerate(files, start=1)]


def _coco_image_folder(annotation_file: Path, images: list[dict], images_dir: str | os.PathLike | None) -> Path:
    if images_dir is not None:
        folder = Path(images_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"images_dir {str(folder)!r} does not exist")
        return folder
    # The file's own folder, or COCO's layout: <root>/annotations/instances_val2017.json -> <root>/val2017.
    candidates = [annotation_file.parent]
    split = annotation_file.stem.split("_", 1)[-1]
    candidates.append(annotation_file.parent.parent / split)
    first = images[0]["file_name"] if images else None
    for folder in candidates:
        if first is None or (folder / first).is_file():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"{annotation_file}: cannot find its images (looked for {first!r} in {tried}); set images_dir")


def _from_coco(path: Path, images_dir: str | os.PathLike | None) -> list[ImageRef]:
    from .coco import read_coco_json  # noqa: PLC0415

    data = read_coco_json(path)
    images = [image for image in data["images"] if isinstance(image, dict) and "file_name" in image and "id" in image]
    if not images:
        raise DatasetError(f"{path} lists no images")
    folder = _coco_image_folder(path, images, images_dir)
    return [
        ImageRef(folder / image["file_name"], image["id"], Path(image["file_name"]).stem)
        for image in sorted(images, key=lambda image: image["id"])
    ]


def _from_voc_list(path: Path, images_dir: str | os.PathLike | None) -> list[ImageRef]:
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path} lists no images")
    # <root>/ImageSets/Segmentation/<split>.txt -> <root>/JPEGImages
    folder = Path(images_dir).expanduser() if images_dir is not None else path.parents[2] / "JPEGImages"
    if not folder.is_dir():
        raise DatasetError(f"{path}: image folder {str(folder)!r} does not exist; set images_dir")
    refs = []
    for image_id in ids:
        found = [
            folder / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES if (folder / f"{image_id}{suffix}").is_file()
        ]
        # A missing file is kept as the .jpg it would be, so that the caller reports it with the others.
        refs.append(ImageRef(found[0] if found else folder / f"{image_id}.jpg", image_id, image_id))
    return refs


def image_source(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> list[ImageRef]:
    """The images named by ``path``: one image file, a folder (its images, sorted), a COCO JSON
    annotation file (``.json``) or a VOC image-set list (``.txt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise DatasetError(f"input {str(path)!r} does not exist")
    if path.suffix.lower() == ".json":
        return _from_coco(path, images_dir)
    if path.suffix.lower() == ".txt":
        return _from_voc_list(path, images_dir)
    return [ImageRef(path, 1, path.stem)]
