"""Files: written whole or not at all (with the temporaries a killed writer leaves cleaned up), and
``torch.save`` files read as data only.

A file is written to a temporary sibling (same folder, so the same filesystem), flushed to disk and
renamed over the target: the rename is atomic, so a reader, a crash, a kill or a full disk sees the
old file or the new one, never a mix. Staging in ``$TMPDIR`` instead (as fsspec does) turns the
final move into a copy over the old file in place whenever ``$TMPDIR`` is another filesystem.

Temporaries carry their writer's host and process id in the name, so that a later writer can tell
a leftover of a killed process (removed) from one that another live process is still writing (kept).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
import socket
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "UnreadableFile",
    "atomic_write",
    "atomic_write_text",
    "load_torch_file",
    "remove_stale_temporaries",
    "temporary_name",
]

log = logging.getLogger(__name__)

_MARK = ".tmp@"  # <target name>.tmp@<host>@<pid>@<random>


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"


def temporary_name(target: str) -> str:
    """The prefix of a temporary for ``target`` written by this process (a random part follows it)."""
    return f".{target}{_MARK}{_host()}@{os.getpid()}@"


def _writer_alive(host: str, pid: int) -> bool:
    if host != _host():
        return True  # another machine's process (shared filesystem): cannot tell, so keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of ``target``, or of any name) whose writer process is
    gone; returns what was removed. Those of live processes, here or on another host, are kept."""
    folder = Path(folder)
    pattern = re.compile(rf"^\.{re.escape(target) if target else '.+'}{re.escape(_MARK)}(.+)@(\d+)@[^@]*$")
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match is None or _writer_alive(match[1], int(match[2])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            log.info("removed %s, left by a writer process that is gone", entry)
            removed.append(entry)
    return removed


def _fsync_folder(folder: Path) -> None:
    # The rename itself reaches the disk only with the folder's entry.
    with contextlib.suppress(OSError):  # not every filesystem can open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file)`` atomically (see the module). If anything fails, the
    temporary is removed and the previous ``path``, if any, is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name) + uuid.uuid4().hex[:8])
    try:
        # Created with the usual permissions (mkstemp would make it private to the owner).
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


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
