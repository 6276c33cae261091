"""Reading ``torch.save`` files as data only, with a reason a person can act on when that fails."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnreadableFile", "load_torch_file"]


class UnreadableFile(ValueError):
    """``str(error)`` is the reason, without the path (callers say what kind of file it should be)."""


# torch.save's format before 1.6 (torchvision's older weight files): a pickle whose first value is
# this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _legacy_format(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def load_torch_file(path: str | os.PathLike) -> Any:
    """The content of a ``torch.save`` file, loaded with ``weights_only=True`` (tensors and plain
    values; a file is data, never code). Raises :class:`FileNotFoundError` for a missing file and
    :class:`UnreadableFile` naming the reason for an empty, non-PyTorch, corrupt or pickled-object
    file. The message never suggests ``weights_only=False``: loading such a file can run its code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise UnreadableFile("the file is empty")
    if not (zipfile.is_zipfile(path) or _legacy_format(path)):
        raise UnreadableFile("not a PyTorch file (neither torch.save's zip archive nor its older format)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnreadableFile(
            "it holds Python objects besides tensors and plain values; this project never writes such files and "
            "does not load them, because loading them can run code"
        ) from None
    except Exception as error:  # a truncated or corrupt archive
        raise UnreadableFile(f"cannot be read ({type(error).__name__}: {error})") from None
