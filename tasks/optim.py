"""Optimiser and learning-rate schedule assembly shared by every task."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from vision_mnv2.models import FeatureBackbone

__all__ = [
    "backbone_parameters",
    "parameter_groups",
    "configure_optimizers",
    "step_budget",
    "steps_per_epoch",
    "warmup_factor",
]

log = logging.getLogger(__name__)


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The pretrained MobileNet's parameters inside a task's network (for detection without SSD's
    extra layers, which are new); none for a network without one."""
    for module in model.modules():
        if isinstance(module, FeatureBackbone):  # MobileNetV2's or MobileNetV1's
            return list(module.parameters())
    return []


def parameter_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, backbone_lr_mult: float = 1.0
) -> list[dict]:
    """Weight decay on conv / linear weights only; none on batch-norm parameters and biases (the
    practice of the TF and torchvision recipes: decay on BN scales hurts small models).

    With ``backbone_lr_mult != 1`` the backbone's parameters get ``lr * backbone_lr_mult`` (a smaller
    rate for pretrained layers when fine-tuning). Frozen parameters are left out.
    """
    if backbone_lr_mult != 1.0 and lr is None:
        raise ValueError("backbone_lr_mult needs the optimizer's lr")
    backbone = {id(p) for p in backbone_parameters(model)} if backbone_lr_mult != 1.0 else set()
    buckets: dict[tuple[bool, bool], list] = {}
    for param in model.parameters():
        if param.requires_grad:
            buckets.setdefault((id(param) in backbone, param.ndim > 1), []).append(param)
    groups = []
    for (in_backbone, decayed), params in sorted(buckets.items(), key=lambda item: (not item[0][1], item[0][0])):
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if in_backbone:
            group["lr"] = lr * backbone_lr_mult
        groups.append(group)
    return groups


def steps_per_epoch(trainer: L.Trainer) -> int | None:
    """Optimizer steps in one epoch of the training data (per process), or None when the data has
    no length (or none at all)."""
    batches = trainer.num_training_batches
    if not (math.isfinite(batches) and batches > 0):
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches)


def step_budget(trainer: L.Trainer) -> int | None:
    """The run's length in optimizer steps when ``trainer.max_steps`` bounds it (a budget), else None."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(min(trainer.max_steps, trainer.estimated_stepping_batches))
    return None


def _run_length(scheduler: Callable) -> str | None:
    """The keyword through which ``scheduler`` takes the run's length (cosine ``T_max``, polynomial
    ``total_iters``) when its config leaves it to the run, else None."""
    keywords = getattr(scheduler, "keywords", {})
    func = getattr(scheduler, "func", scheduler)
    try:
        accepted = inspect.signature(func).parameters
    except (TypeError, ValueError):
        accepted = {}
    return next((name for name in ("T_max", "total_iters") if name in accepted and name not in keywords), None)


def _schedule(module: L.LightningModule, scheduler: Callable, interval: str) -> tuple[dict[str, int], str]:
    """The run-length keyword for ``scheduler`` and the interval it steps at, so that one config
    fits a run of any length. A schedule over the run follows a step budget (``trainer.max_steps``,
    no epoch count): it is laid over the steps whatever its configured interval, so that a budget
    means the same on any dataset size."""
    trainer = module.trainer
    length = _run_length(scheduler)
    if length is None:
        return {}, interval  # its own period (StepLR's step_size, ...): per epoch or step as configured
    budget = step_budget(trainer)
    if budget is not None:
        if interval == "epoch":
            log.info(
                "The %s schedule runs over the budget of %d steps (per step, not per epoch)", _name(scheduler), budget
            )
        return {length: budget}, "step"
    if interval == "step":
        return {length: max(1, int(trainer.estimated_stepping_batches))}, interval
    if trainer.max_epochs is None or trainer.max_epochs < 0:
        raise ValueError("a schedule over the run's epochs needs trainer.max_epochs, or a budget in trainer.max_steps")
    return {length: max(1, int(trainer.max_epochs))}, interval


def _name(scheduler: Callable) -> str:
    func = getattr(scheduler, "func", scheduler)
    return getattr(func, "__name__", type(func).__name__)


def configure_optimizers(
    module: L.LightningModule,
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
    interval: str = "epoch",
    backbone_lr_mult: float = 1.0,
):
    """Build the optimizer from its partial, then the scheduler over the whole run (its length
    filled from the trainer). Warm-up is not a scheduler here: it scales each step's learning rate
    on top of any schedule (:func:`warmup_factor`, applied by the task module), per step whatever the
    schedule's interval.

    The optimizer partial's ``weight_decay`` applies to weights only (:func:`parameter_groups`).
    """
    if interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}")
    keywords = getattr(optimizer, "keywords", {})
    opt = optimizer(parameter_groups(module, keywords.get("weight_decay", 0.0), keywords.get("lr"), backbone_lr_mult))
    if scheduler is None:
        return opt
    length, interval = _schedule(module, scheduler, interval)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt, **length), "interval": interval}}


def warmup_factor(step: int, warmup_steps: int, start: float = 0.01) -> float:
    """Linear warm-up from ``start`` times the learning rate at step 0 to the full rate at
    ``warmup_steps`` (torchvision's references use the same shape, start 0.01)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps
