"""What Lightning and torch print that a user of this project does not need to read.

Each entry is here because it says nothing the run can act on: advertisements, accelerators this
project never uses, a deprecation inside Lightning itself, and the eval-mode warning that frozen
layers and frozen batch norm trigger on purpose (``model.freeze_backbone`` / ``model.frozen_bn``).

It also makes each of their log lines appear once. Lightning (and torchmetrics) give their loggers
a console handler of their own when imported ("INFO: Seed set to 42"), and their records also reach
the root logger's handlers, which Hydra sets up for a tool's run (the console, and the run's log
file): every line was printed twice. Where the root logger has handlers, theirs are removed, so the
lines go through the root's only: once on the console, and into the run's log file.
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
# Loggers that get a console handler of their own at import (Lightning's "lightning.pytorch" and
# "lightning.fabric" also stop propagating when the root logger had no handler at that moment).
_OWN_CONSOLES = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


_FILTER = _DropNoise()


def _through_root_only() -> None:
    if not logging.getLogger().handlers:
        return  # nothing configured logging: their own handlers are the only output
    for name in _OWN_CONSOLES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # the library's own console; a file handler stays
                logger.removeHandler(handler)
        logger.propagate = True


def quiet_lightning() -> None:
    """Install the filters and route Lightning's log lines through the root logger (idempotent)."""
    _through_root_only()
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # Inside Lightning's own pytree helper (torch renamed the check); nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Frozen stages and frozen batch norm keep those modules in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
