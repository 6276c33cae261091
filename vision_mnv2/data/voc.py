"""Semantic segmentation data in the Pascal VOC 2012 layout.

::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png          palette PNG: pixel value = class index, 255 = ignore
    root/ImageSets/Segmentation/<split>.txt  one image id per line

SBD's augmented training set (``train_aug``, 10,582 images) is the same layout with another mask
folder (commonly ``SegmentationClassAug``, grayscale PNGs holding class indices) and list; both are
settings here. Masks are checked when read: their size must equal the image's and every value must
be a class index or the ignore label, otherwise the error names the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .classification import DatasetError, read_rgb

__all__ = [
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "VOCSegmentation",
    "read_mask",
    "voc_palette",
    "write_mask",
]

IGNORE_INDEX = 255
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CLASS_NAMES_FILE = "class_names.txt"


def voc_palette() -> list[int]:
    """The VOC colour map (256 RGB entries, flattened): class c's colour comes from the bits of c."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Save a class-index mask as a VOC palette PNG."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Class indices of a VOC mask: a palette PNG (VOC) or a single-channel PNG (SBD ``*Aug``).

    An RGB mask is refused: its colours would have to be mapped back to classes, and guessing
    silently is how labels go wrong.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DatasetError(
                    f"{path}: mask has mode {image.mode}; expected a palette ('P') or grayscale ('L') PNG "
                    "whose pixel values are class indices"
                )
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as error:
        raise DatasetError(f"{path}: cannot read mask ({error})") from None


def _read_class_names(root: Path, num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        names = [str(name) for name in class_names]
    elif (root / CLASS_NAMES_FILE).is_file():
        names = [line.strip() for line in (root / CLASS_NAMES_FILE).read_text().splitlines() if line.strip()]
    elif num_classes == len(VOC_CLASSES):
        names = list(VOC_CLASSES)
    else:
        names = [f"class_{index}" for index in range(num_classes)]
    if len(names) != num_classes:
        raise DatasetError(f"{root}: {len(names)} class names {names} but num_classes is {num_classes}")
    return names


class VOCSegmentation:
    """Images and class-index masks of one image-set list, through a joint albumentations transform.

    Args:
        root: the ``VOC2012`` folder (or a user's folder in the same layout).
        split: name of the list in ``ImageSets/Segmentation`` (``train``, ``val``, ``train_aug``).
        num_classes: classes including the background; mask values must be below it or 255.
        transform: albumentations ``Compose`` called as ``transform(image=..., mask=...)``.
        class_names: names in index order; default ``root/class_names.txt`` when present, the VOC
            names for 21 classes, else ``class_<i>``.
        image_dir / mask_dir / list_dir: folders relative to ``root``.
        image_suffix / mask_suffix: file name endings after the id.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        num_classes: int,
        transform: Callable | None = None,
        class_names: Sequence[str] | None = None,
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
        list_dir: str = "ImageSets/Segmentation",
        image_suffix: str = ".jpg",
        mask_suffix: str = ".png",
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"data.root {str(self.root)!r} does not exist")
        list_file = self.root / list_dir / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"image-set list {str(list_file)!r} does not exist")
        self.ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise DatasetError(f"{list_file} lists no images")
        self.images = [self.root / image_dir / f"{i}{image_suffix}" for i in self.ids]
        self.masks = [self.root / mask_dir / f"{i}{mask_suffix}" for i in self.ids]
        # Found now, at set-up, rather than hours into training.
        missing = [str(p) for pair in zip(self.images, self.masks) for p in pair if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(f"{list_file} names files that do not exist: {', '.join(missing[:3])}{more}")
        self.num_classes = num_classes
        self.class_names = _read_class_names(self.root, num_classes, class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (H x W x 3 uint8) and its checked mask (H x W uint8) before any transform."""
        image = read_rgb(self.images[index])
        mask = read_mask(self.masks[index])
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.masks[index]}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{self.images[index].name} is {image.shape[1]}x{image.shape[0]}"
            )
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(int(v) for v in np.unique(mask[bad]))
            raise DatasetError(
                f"{self.masks[index]}: mask values {values[:10]} are neither a class index "
                f"(0..{self.num_classes - 1}) nor the ignore label {IGNORE_INDEX}"
            )
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return image, mask
