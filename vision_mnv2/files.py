"""Files: written whole or not at all (with the temporaries a killed writer leaves cleaned up), and
``torch.save`` files read as data only.

A file is written to a temporary sibling (same folder, so the same filesystem), flushed to disk and
renamed over the target: the rename is atomic, so a reader, a crash, a kill or a full disk sees the
old file or the new one, never a mix. Staging in ``$TMPDIR`` instead (as fsspec does) turns the
final move into a copy over the old file in place whenever ``$TMPDIR`` is another filesystem.

Temporaries carry their writer's host and process id in the name, so that a later writer can tell
a leftover of a killed process (removed) from one that another live process is still writing (kept).

A write that fails in the operating system (a full disk, a read-only folder) raises
:class:`WriteFailed`, which names the file, the cause (with the space left on a full disk) and what
became of the previous file; ``torch.save`` would report a full disk as an internal zip-writer error
("unexpected pos ...") with the cause buried in the exception chain.
"""

from __future__ import annotations

import contextlib
import errno
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
    "WriteFailed",
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


# What a file is, by its ending, for messages that name it.
_KINDS = {
    ".ckpt": "checkpoint",
    ".pt": "checkpoint",
    ".pth": "checkpoint",
    ".onnx": "ONNX export",
    ".pte": "ExecuTorch program",
    ".json": "JSON file",
}


class WriteFailed(OSError):
    """A file could not be written: ``str(error)`` names it, the operating system's reason and what
    became of the previous file; ``errno`` is the cause's, so ``except OSError`` still catches it."""

    def __init__(self, message: str, code: int | None, path: Path) -> None:
        super().__init__(code, os.strerror(code) if code else message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def _os_error_in(error: BaseException) -> OSError | None:
    """``error`` itself when it is an :class:`OSError`, else the first one in its chain (torch.save
    reports a failed write as a RuntimeError of its zip writer, the OSError as its context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _mount_point(folder: Path) -> Path:
    folder = folder.resolve()
    while not os.path.ismount(folder) and folder.parent != folder:
        folder = folder.parent
    return folder


def _megabytes(size: int) -> str:
    megabytes = size / 2**20
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{megabytes:,.0f} MB"


def _write_failure(path: Path, kind: str, cause: OSError, existed: bool) -> WriteFailed:
    reason = cause.strerror or str(cause) or type(cause).__name__
    if cause.errno == errno.ENOSPC:
        with contextlib.suppress(OSError):  # measured after the temporary is gone: what is free now
            stats = os.statvfs(path.parent)
            reason += f" ({_megabytes(stats.f_bavail * stats.f_frsize)} free on {_mount_point(path.parent)})"
    outcome = f"the previous {kind} is intact" if existed else "no partial file was left behind"
    return WriteFailed(f"could not write {kind} {path}: {reason}; {outcome}", cause.errno, path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], kind: str | None = None) -> Path:
    """Write ``path`` through ``write(file)`` atomically (see the module). If anything fails, the
    temporary is removed and the previous ``path``, if any, is left as it was; a failure of the
    operating system (disk full, no permission) raises :class:`WriteFailed`, which names the file as
    ``kind`` (default: by its ending, "checkpoint", "ONNX export", ...)."""
    path = Path(path)
    kind = kind or _KINDS.get(path.suffix.lower(), "file")
    existed = path.exists()
    tmp = path.with_name(temporary_name(path.name) + uuid.uuid4().hex[:8])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created with the usual permissions (mkstemp would make it private to the owner).
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except Exception as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = _os_error_in(error)
        if cause is None:
            raise
        raise _write_failure(path, kind, cause, existed) from error
    except BaseException:  # KeyboardInterrupt, SystemExit: clean up, change nothing else
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, kind: str | None = None) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")), kind)


class UnreadableFile(ValueError):
    """``str(error)`` is the reason, without the path (callers say what kind of file it should be)."""


# torch.save's format before 1.6 (torchvision's older weight files): a pickle whose first value is
# this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _legacy_format(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


# The first bytes of torch.save's zip archive (a zip's local file header). The archive's index, which
# zipfile and torch look for first, is at its end: a file cut short has these bytes and no index.
_ZIP_START = b"PK\x03\x04"


def _truncated(size: int, format_name: str = "a PyTorch zip archive") -> str:
    return (
        f"the file is truncated ({_megabytes(size)}): it starts like {format_name} but its end is missing "
        "(the copy or the write did not finish); copy or write it again"
    )


def _starts_like_a_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(_ZIP_START)) == _ZIP_START


def _holds_a_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return True  # damaged: torch.load says how


def load_torch_file(path: str | os.PathLike) -> Any:
    """The content of a ``torch.save`` file, loaded with ``weights_only=True`` (tensors and plain
    values; a file is data, never code). Raises :class:`FileNotFoundError` for a missing file and
    :class:`UnreadableFile` naming the reason for an empty, truncated, non-PyTorch, corrupt or
    pickled-object file. The message never suggests ``weights_only=False``: loading such a file can
    run its code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFile("the file is empty")
    is_zip = zipfile.is_zipfile(path)
    if not (is_zip or _legacy_format(path)):
        if _starts_like_a_zip(path):
            raise UnreadableFile(_truncated(size))
        raise UnreadableFile("not a PyTorch file (neither torch.save's zip archive nor its older format)")
    if is_zip and not _holds_a_pickle(path):
        raise UnreadableFile("a zip archive, but not one torch.save writes (it holds no data.pkl)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnreadableFile(
            "it holds Python objects besides tensors and plain values; this project never writes such files and "
            "does not load them, because loading them can run code"
        ) from None
    except EOFError:  # the older format, cut short
        raise UnreadableFile(_truncated(size, "a PyTorch file of the older format")) from None
    except Exception as error:  # an archive damaged inside
        raise UnreadableFile(f"the file is damaged ({type(error).__name__}: {error}); copy or write it again") from None
