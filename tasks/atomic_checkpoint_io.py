"""Lightning checkpoint I/O that replaces a checkpoint atomically on its own filesystem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vision_mnv2.files import atomic_write, remove_stale_temporaries

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file next to it, syncs it and renames it into place.

    Lightning stages the file in ``$TMPDIR`` and moves it; where ``$TMPDIR`` is another filesystem
    the move copies over the old file in place, so a full disk or a kill during that copy destroys
    the previous ``last.ckpt``. Here the previous checkpoint stays readable until the new one is
    complete. Leftovers of a writer killed mid-write are removed at the next save. The content is
    what Lightning writes (``torch.save`` of the checkpoint dict), so it loads with ``weights_only``.
    A failed write (a full disk) raises :class:`~vision_mnv2.files.WriteFailed` naming the file, the
    cause and the space left, where ``torch.save`` alone ends in an internal zip-writer error.
    Remote paths (``s3://`` ...) keep Lightning's own handling.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        remove_stale_temporaries(path.parent)
        atomic_write(path, lambda file: torch.save(checkpoint, file), kind="checkpoint")
