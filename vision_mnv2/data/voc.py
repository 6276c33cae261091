"""Semantic segmentation data in the Pascal VOC 2012 layout.

::

    root/JPEGImages/<id>.jpg                 or .jpeg / .png (CamVid-style sets), whichever exists
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

from ..files import atomic_write
from .checks import BadSamples, DatasetError, image_problem, parallel_map
from .classification import read_rgb

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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # tried in this order, in lower and upper case


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
    """Save a class-index mask as a VOC palette PNG, whole or not at all."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(voc_palette())
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


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
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
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


class _NoImage:
    """In place of an image path: none, or more than one, file was found for an id."""

    def __init__(self, where: Path, problem: str) -> None:
        self.where, self.problem = str(where), problem


def _find_images(folder: Path, ids: Sequence[str], suffixes: Sequence[str]) -> list[Path | _NoImage]:
    """The image file of each id: ``<id><suffix>`` for the one suffix (any case) that exists."""
    endings = list(dict.fromkeys(e for suffix in suffixes for e in (suffix.lower(), suffix.upper())))
    tried = ", ".join(suffix.lower() for suffix in suffixes)
    listings: dict[Path, set[str]] = {}  # one listing per folder instead of a stat per id and ending

    def names_in(sub: Path) -> set[str]:
        if sub not in listings:
            try:
                listings[sub] = set(os.listdir(sub))
            except OSError:
                listings[sub] = set()
        return listings[sub]

    images: list[Path | _NoImage] = []
    for image_id in ids:
        stem = folder / image_id
        found = [f"{stem.name}{e}" for e in endings if f"{stem.name}{e}" in names_in(stem.parent)]
        if len(found) == 1:
            images.append(stem.parent / found[0])
        elif not found:
            images.append(_NoImage(stem, f"no image file for this id (tried {tried}, any case)"))
        else:
            images.append(_NoImage(stem, f"{len(found)} image files for this id ({', '.join(found)})"))
    return images


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
        image_suffixes: file name endings an image may have after its id; the one that exists is
            used (two images for one id are a bad sample, not a guess).
        mask_suffix: file name ending of the masks after the id.
        skip_bad: leave out samples whose files are missing or bad (counted in :attr:`bad`, logged)
            instead of raising.
        check_images: ``"quick"``, ``"full"`` or ``"none"`` for the images (see
            :mod:`vision_mnv2.data.checks`); unless ``"none"``, every mask is read and checked
            (size, values) at construction too — masks are small PNGs.
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
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        mask_suffix: str = ".png",
        skip_bad: bool = False,
        check_images: str = "quick",
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
        self.images = _find_images(self.root / image_dir, self.ids, image_suffixes)
        self.masks = [self.root / mask_dir / f"{i}{mask_suffix}" for i in self.ids]
        self.num_classes = num_classes
        self.class_names = _read_class_names(self.root, num_classes, class_names)
        self.transform = transform
        # Found now, at set-up, rather than hours into training.
        self.bad = BadSamples(str(list_file), skip_bad)
        problems = parallel_map(lambda index: self._sample_problem(index, check_images), range(len(self.ids)))
        keep = [index for index, problem in enumerate(problems) if problem is None]
        self.bad.extend(problem for problem in problems if problem is not None)
        self.bad.resolve()
        if not keep:
            raise DatasetError(f"{list_file}: no usable sample is left")
        self.ids = [self.ids[i] for i in keep]
        self.images = [self.images[i] for i in keep]
        self.masks = [self.masks[i] for i in keep]

    def _sample_problem(self, index: int, check: str) -> tuple[str, str] | None:
        image, mask = self.images[index], self.masks[index]
        if isinstance(image, _NoImage):
            return image.where, image.problem
        for path in (image, mask):
            if not path.is_file():
                return str(path), "file does not exist"
        if check == "none":
            return None
        problem, size = image_problem(image, check)
        if problem:
            return str(image), problem
        try:
            problem = self._mask_problem(read_mask(mask), (size[1], size[0]), image.name)
        except DatasetError as error:
            problem = str(error).removeprefix(f"{mask}: ")
        return (str(mask), problem) if problem else None

    def _mask_problem(self, mask: np.ndarray, image_shape: tuple[int, int], image_name: str) -> str | None:
        if mask.shape != image_shape:
            return (
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_name} is "
                f"{image_shape[1]}x{image_shape[0]}"
            )
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            values = sorted(int(v) for v in np.unique(mask[bad]))
            return (
                f"mask values {values[:10]} are neither a class index (0..{self.num_classes - 1}) "
                f"nor the ignore label {IGNORE_INDEX}"
            )
        return None

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (H x W x 3 uint8) and its checked mask (H x W uint8) before any transform."""
        image = read_rgb(self.images[index])
        mask = read_mask(self.masks[index])
        problem = self._mask_problem(mask, image.shape[:2], self.images[index].name)
        if problem:
            raise DatasetError(f"{self.masks[index]}: {problem}")
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return image, mask
