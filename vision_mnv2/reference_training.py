"""The plain PyTorch training loop of the field's reference recipes (torchvision's tutorials and
reference scripts), which the fine-tuning benchmarks train beside this project's presets: a seeded,
shuffled loader, one optimizer and scheduler step per batch, for a fixed number of steps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["train_steps"]


def train_steps(
    model: nn.Module,
    data: torch.utils.data.Dataset,
    *,
    batch_size: int,
    steps: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Callable[[torch.utils.data.DataLoader], torch.optim.lr_scheduler.LRScheduler],
    loss: Callable[[Tensor, Tensor], Tensor] | None,
    seed: int = 0,
    workers: int = 2,
    collate_fn: Callable | None = None,
) -> nn.Module:
    """``model`` trained ``steps`` steps of ``batch_size`` (whole batches, epochs as often as it
    takes), ``scheduler(loader)`` stepped after every step; returned in eval mode.

    ``loss(model(inputs), targets)`` is minimised; with ``loss=None`` the model computes its own
    losses, as torchvision's detectors do: the sum of the dict ``model(inputs, targets)`` returns."""
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(data)} training samples make no whole batch of {batch_size}")
    schedule = scheduler(loader)
    model.train()
    done = 0
    while done < steps:
        for inputs, targets in loader:
            value = sum(model(inputs, targets).values()) if loss is None else loss(model(inputs), targets)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            schedule.step()
            done += 1
            if done == steps:
                break
    return model.eval()
