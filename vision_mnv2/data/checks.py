"""Set-up checks of a dataset's files, so that a bad sample is found before training, not hours in.

Every dataset here collects what is wrong with its samples in a :class:`BadSamples` while it is
constructed and then either raises one :class:`DatasetError` naming the files and problems (the
default) or, with ``skip_bad``, drops those samples, counts them and logs them.

Image files are checked by ``check_images``:

- ``"quick"`` (default): the header is read (format and size), PNGs are verified chunk by chunk
  (CRCs, so truncation shows), and a JPEG whose last bytes hold no end-of-image marker is decoded
  in full to tell a truncated file from one with data appended (motion photos). Cheap enough to run
  over ImageNet on every start.
- ``"full"``: every image is decoded.
- ``"none"``: only that the file exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from PIL import Image

__all__ = ["CHECK_MODES", "BadSamples", "DatasetError", "image_problem", "check_image_files", "parallel_map"]

log = logging.getLogger(__name__)

CHECK_MODES = ("quick", "full", "none")
_JPEG_END = b"\xff\xd9"
_TAIL_BYTES = 1024
_SHOWN = 5  # problems quoted in an error or warning; the rest are counted (and logged one by one)


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the path and the problem."""


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]`` on threads: file reads and PIL decoding release the GIL."""
    if len(items) < 64:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        return list(pool.map(function, items, chunksize=64))


def _jpeg_has_end_marker(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return _JPEG_END in file.read()


def image_problem(path: str | os.PathLike, check: str = "quick") -> tuple[str | None, tuple[int, int] | None]:
    """What is wrong with an image file (``None`` if nothing) and its (width, height) if readable."""
    if check not in CHECK_MODES:
        raise ValueError(f"check_images must be one of {CHECK_MODES}, got {check!r}")
    path = Path(path)
    if not path.is_file():
        return "file does not exist", None
    if check == "none":
        return None, None
    try:
        with Image.open(path) as image:
            size, kind = image.size, image.format
            if check == "full" or (kind == "JPEG" and not _jpeg_has_end_marker(path)):
                image.load()  # raises on a truncated or corrupt stream
            elif kind == "PNG":
                image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"cannot read image ({error})", None
    return None, size


def check_image_files(
    paths: Sequence[str | os.PathLike], check: str = "quick"
) -> list[tuple[str | None, tuple[int, int] | None]]:
    """:func:`image_problem` of many files, in parallel."""
    return parallel_map(lambda path: image_problem(path, check), list(paths))


@dataclass
class BadSamples:
    """The bad samples found in one source (an annotation file, a split folder, an image-set list).

    ``skip_bad=False``: :meth:`resolve` raises one :class:`DatasetError` listing them. ``True``: it
    logs them (a warning with the count, each one at INFO) and the caller drops them.
    """

    source: str
    skip_bad: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str | os.PathLike, problem: str) -> None:
        self.problems.append((str(where), problem))

    def extend(self, items: Iterable[tuple[str | os.PathLike, str]]) -> None:
        for where, problem in items:
            self.add(where, problem)

    def __len__(self) -> int:
        return len(self.problems)

    def _listing(self) -> str:
        shown = "; ".join(f"{where}: {problem}" for where, problem in self.problems[:_SHOWN])
        more = f"; and {len(self.problems) - _SHOWN} more" if len(self.problems) > _SHOWN else ""
        return shown + more

    def resolve(self) -> None:
        if not self.problems:
            return
        if not self.skip_bad:
            raise DatasetError(
                f"{self.source}: {len(self.problems)} bad sample(s): {self._listing()}. "
                "Fix or remove them, or set data.skip_bad=true to skip them."
            )
        log.warning("%s: skipping %d bad sample(s): %s", self.source, len(self.problems), self._listing())
        for where, problem in self.problems:
            log.info("skipped %s: %s", where, problem)
