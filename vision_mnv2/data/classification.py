"""Classification data in the ImageNet folder layout: ``<root>/<split>/<class>/<image>``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor
from torchvision.datasets import ImageFolder

from .checks import BadSamples, DatasetError, check_image_files

__all__ = ["ImageFolderClassification", "DatasetError", "read_rgb"]


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as an H x W x 3 uint8 RGB array; an unreadable file is a :class:`DatasetError`
    naming it (not a PIL traceback)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # as the set-up checks catch
        raise DatasetError(f"{path}: cannot read image ({error})") from None


class ImageFolderClassification(ImageFolder):
    """torchvision's ``ImageFolder`` returning numpy RGB images through an albumentations pipeline.

    Args:
        root: the dataset root (holding ``train/``, ``val/``, ...).
        split: sub-folder to read.
        transform: albumentations ``Compose`` (called as ``transform(image=array)``).
        classes: expected class names in label order, e.g. the training split's, so that a validation
            split with other folders is an error rather than silently shifted labels.
        skip_bad: drop unreadable images (counted in :attr:`bad`, logged) instead of raising.
        check_images: how closely images are checked at construction (see :mod:`.checks`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable | None = None,
        classes: list[str] | None = None,
        skip_bad: bool = False,
        check_images: str = "quick",
    ) -> None:
        folder = Path(root).expanduser() / split
        if not folder.is_dir():
            raise DatasetError(f"classification split folder {str(folder)!r} does not exist")
        try:
            super().__init__(str(folder), loader=read_rgb)
        except FileNotFoundError as exc:  # no class folders, or no image in them
            raise DatasetError(f"{folder}: {exc}") from exc
        if classes is not None and list(classes) != self.classes:
            raise DatasetError(
                f"class folders of {str(folder)!r} {self.classes} differ from the expected {list(classes)}"
            )
        self.bad = BadSamples(f"classification split {str(folder)!r}", skip_bad)
        results = check_image_files([path for path, _ in self.samples], check_images)
        good = []
        for sample, (problem, _) in zip(self.samples, results):
            if problem is None:
                good.append(sample)
            else:
                self.bad.add(sample[0], problem)
        self.bad.resolve()
        if not good:
            raise DatasetError(f"{folder}: no readable image is left")
        self.samples = self.imgs = good
        self.targets = [target for _, target in good]
        self.album_transform = transform

    def __getitem__(self, index: int) -> tuple[Tensor | np.ndarray, int]:
        path, target = self.samples[index]
        image = self.loader(path)
        if self.album_transform is not None:
            image = self.album_transform(image=image)["image"]
        return image, target
