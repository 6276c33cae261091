"""What Lightning and torch print that a user of this project does not need to read.

Each entry is here because it says nothing the run can act on: advertisements, accelerators this
project never uses, a deprecation inside Lightning itself, and the eval-mode warning that frozen
layers and frozen batch norm trigger on purpose (``model.freeze_backbone`` / ``model.frozen_bn``).
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_lightning"]

_NOISE = (
    "💡 Tip:",  # litlogger / litmodels advertisements
    "TPU available:",
    "Skipping setting a default `ModelSummary` callback",  # ours is the configured RichModelSummary
)
_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


_FILTER = _DropNoise()


def quiet_lightning() -> None:
    """Install the filters (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # Inside Lightning's own pytree helper (torch renamed the check); nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Frozen stages and frozen batch norm keep those modules in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
