"""Set-up checks of a dataset's files, so that a bad sample is found before training, not hours in.

Every dataset here collects what is wrong with its samples in a :class:`BadSamples` while it is
constructed and then either raises one :class:`DatasetError` naming the files and problems (the
default) or, with ``skip_bad``, drops those samples, counts them and logs them.

Image files are checked by ``check_images``:

- ``"quick"`` (default): the header is read (format and size; JPEG frame headers without PIL), PNGs are verified chunk by chunk
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
    """``[function(item) for item in items]`` on threads: file reads and PIL decoding release the GIL.
    Items go to the threads in chunks: a future per item costs more than a quick check of a file."""
    if len(items) < 64:
        return [function(item) for item in items]
    workers = min(16, 4 * (os.cpu_count() or 1))
    size = max(64, min(1024, len(items) // (4 * workers)))
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [
            result for chunk in pool.map(lambda chunk: [function(item) for item in chunk], chunks) for result in chunk
        ]


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the image size.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_HEAD_BYTES = 16384


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker in ``head``, or ``None`` for anything
    this walk does not settle (not a JPEG, frame beyond ``head``, unusual layout): PIL decides those."""
    if head[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        if marker in _JPEG_SOF:
            if at + 10 > len(head) or head[at + 4] != 8:
                return None
            height, width = int.from_bytes(head[at + 5 : at + 7], "big"), int.from_bytes(head[at + 7 : at + 9], "big")
            return (width, height) if width > 0 and height > 0 and head[at + 9] in (1, 3, 4) else None
        if marker == 0xDA:  # scan data before any frame header
            return None
        at += 2 + int.from_bytes(head[at + 2 : at + 4], "big")
    return None


def _jpeg_has_end_marker(path: Path) -> bool:
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return _JPEG_END in file.read()


def image_problem(path: str | os.PathLike, check: str = "quick") -> tuple[str | None, tuple[int, int] | None]:
    """What is wrong with an image file (``None`` if nothing) and its (width, height) if readable."""
    if check not in CHECK_MODES:
        raise ValueError(f"check_images must be one of {CHECK_MODES}, got {check!r}")
    if check == "none":
        return (None, None) if os.path.isfile(path) else ("file does not exist", None)
    try:
        file = open(path, "rb")  # noqa: SIM115 (closed below)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return "file does not exist", None
    except OSError as error:
        return f"cannot read image ({error})", None
    with file:
        if check == "quick":
            # The common case without PIL: a JPEG's frame header read here, and its end marker
            # where it belongs (a file without one goes to PIL below, which decodes it).
            try:
                size = _jpeg_size(file.read(_HEAD_BYTES))
                if size is not None:
                    file.seek(max(0, os.fstat(file.fileno()).st_size - _TAIL_BYTES))
                    if _JPEG_END in file.read():
                        return None, size
            except OSError as error:
                return f"cannot read image ({error})", None
    path = Path(path)
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
