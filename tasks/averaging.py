"""An exponential moving average of the weights that fits a run of any length.

Lightning's ``EMAWeightAveraging`` uses one decay from the first step. With 0.999 the average of a
150-step fine-tune still holds 86% of the starting weights, whose classifier layer is random, so
validation scores the start rather than the run. TF's ``ExponentialMovingAverage(decay,
num_updates)``, which the MobileNet papers' training used, ramps the decay up instead: after ``n``
updates it is ``min(decay, (1 + n) / (10 + n))``, so the average follows the weights early in a run
(when they move most) and settles at ``decay`` once ``n`` passes about ``10 / (1 - decay)`` steps.
"""

from __future__ import annotations

import functools

from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor

__all__ = ["EMAWithWarmup", "warmed_up_decay"]


def warmed_up_decay(decay: float, updates: Tensor) -> Tensor:
    """The decay after ``updates`` earlier updates: TF's ``min(decay, (1 + n) / (10 + n))``. A tensor
    op on the count's device, so that a GPU run does not wait on the host once per parameter."""
    return ((1.0 + updates) / (10.0 + updates)).clamp(max=decay)


def _ema_update(averaged: Tensor, current: Tensor, updates: Tensor, decay: float) -> Tensor:
    # In float32 whatever the weights' type: bfloat16 would round a decay of 0.999 itself to 1, and
    # the average would never move. Integer buffers (batch norm's num_batches_tracked) stay integers.
    d = warmed_up_decay(decay, updates)  # float32: the count is an integer tensor
    return (averaged.float() * d + current.float() * (1.0 - d)).to(averaged.dtype)


class EMAWithWarmup(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (validation, checkpoints and the end of the run use the
    averaged weights, resumed runs carry the average on) whose decay warms up as TF's does; with
    ``warmup=False`` it is Lightning's callback unchanged."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup:
            # A module-level function bound with partial, not a closure: DDP's spawn pickles callbacks.
            self._kwargs["avg_fn"] = functools.partial(_ema_update, decay=decay)
