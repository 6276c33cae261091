"""Learning-rate warm-up runs per step, on top of any schedule, whatever the schedule's interval."""

from __future__ import annotations

import math

import pytest
from lightning.pytorch.callbacks import Callback

from tasks.optim import warmup_factor

from .helpers import compose_config, tiny_classification_overrides, train_with_callbacks


def test_warmup_factor_is_linear_per_step():
    assert [warmup_factor(step, 4) for step in range(6)] == pytest.approx([0.01, 0.2575, 0.505, 0.7525, 1.0, 1.0])
    assert warmup_factor(0, 0) == 1.0


class _StepRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_one_epoch_of_warmup_ramps_per_step_under_an_epoch_schedule(tiny_cls_root, tmp_path):
    """Classification steps its cosine schedule per epoch; the warm-up still ramps within epoch 0
    (it used to hold all of epoch 0 at 1% of the rate) and leaves the schedule's values alone."""
    recorder = _StepRates()
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=3", "module.warmup_epochs=1"]
    train_with_callbacks(compose_config("train", overrides, tmp_path), recorder)
    per_epoch = 4  # 32 training images, batch 8
    base = 4.0e-3  # the task's AdamW rate
    warmup = recorder.rates[:per_epoch]
    assert warmup == pytest.approx([base * warmup_factor(step, per_epoch) for step in range(per_epoch)])
    # After it: cosine over 3 epochs, as if there had been no warm-up.
    for epoch in (1, 2):
        expected = base * (1 + math.cos(math.pi * epoch / 3)) / 2
        assert recorder.rates[epoch * per_epoch : (epoch + 1) * per_epoch] == pytest.approx([expected] * per_epoch)
