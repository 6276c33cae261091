"""The moving average of the weights (callbacks=ema): TF's warmed-up decay, through Lightning's trainer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from tasks.averaging import EMAWithWarmup, warmed_up_decay


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _WeightsAfterEachStep(L.Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))


def _fit(ema: EMAWithWarmup, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 1.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)
    recorder = _WeightsAfterEachStep()
    model = _Regression()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        callbacks=[recorder, ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    # At the end of training the callback leaves the averaged weights in the model.
    return torch.cat([p.detach().flatten() for p in model.parameters()]), recorder.weights


def test_the_decay_warms_up_as_tfs_does():
    updates = torch.tensor([0, 1, 8, 90, 10_000])
    expected = [min(0.99, (1 + n) / (10 + n)) for n in updates.tolist()]
    assert warmed_up_decay(0.99, updates).tolist() == pytest.approx(expected)
    assert warmed_up_decay(0.99, updates)[-1] == pytest.approx(0.99), "settles at the configured decay"


@pytest.mark.parametrize("warmup", [True, False])
def test_the_trained_model_ends_with_the_average_of_its_steps(warmup):
    steps, decay = 24, 0.999
    averaged, weights = _fit(EMAWithWarmup(decay=decay, warmup=warmup), steps)
    assert len(weights) == steps
    expected = weights[0].clone()  # the first update copies the weights
    for n, w in enumerate(weights[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        expected = d * expected + (1 - d) * w
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-6)
    # What the warm-up is for: after a short run the average has moved most of the way from the
    # first step's weights to the last's; without it, it has hardly moved.
    moved = ((averaged - weights[0]).norm() / (weights[-1] - weights[0]).norm()).item()
    assert (moved > 0.5) if warmup else (moved < 0.1), moved
