"""Model size: parameters and multiply-accumulates (the paper's "MAdds")."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_macs"]


def count_parameters(model: nn.Module) -> int:
    """All parameters, batch-norm affine included (torchvision's convention)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image, convolutions and linear layers.

    ``FlopCounterMode`` counts 2 FLOPs per multiply-add, so it is halved. Batch norm, activations and
    additions are not counted, as in the paper and TF's checkpoint table.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(batch_size, 3, *input_size, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops() // 2 // batch_size
    finally:
        model.train(was_training)
