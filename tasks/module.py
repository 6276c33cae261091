"""``TaskModule``: the LightningModule base of every task (network, optimiser and schedule from Hydra
partials, transfer learning, seeded steps, non-finite loss handling, checkpoint metadata)."""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import nn

from vision_mnv2.checkpoint import META_KEY, ModelMeta
from vision_mnv2.models import transfer_weights
from vision_mnv2.models.registry import build_config
from vision_mnv2.pipelines import describe

from .optim import backbone_parameters, configure_optimizers, step_budget, steps_per_epoch, warmup_factor

__all__ = ["TaskModule"]

log = logging.getLogger(__name__)


class TaskModule(L.LightningModule):
    """Base of the task modules: holds the network and builds optimiser and schedule from the
    Hydra partials. Only plain numbers go into the checkpoint's hyper-parameters, so checkpoints
    load with ``torch.load(weights_only=True)``.

    Args:
        model: the network, built by Hydra.
        optimizer: ``partial`` taking the parameters (Hydra ``_partial_: true``).
        scheduler: ``partial`` taking the optimizer, or ``None``.
        scheduler_interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        warmup_epochs: linear warm-up of the learning rate over this many epochs' worth of steps,
            per step and on top of ``scheduler`` (0 for none).
        channels_last: run the network in NHWC memory layout (faster on CPU and tensor cores).
        init_from: transfer learning: a torchvision ``mobilenet_v2`` file, its name
            (``IMAGENET1K_V1``, from the local cache), or a checkpoint of any task here. The backbone
            always carries over; head tensors when their shapes fit (same classes).
        backbone_lr_mult: learning rate of the backbone relative to the heads.
        head_only_fraction: the first part of the run (this fraction of its optimizer steps) trains
            the heads alone (the backbone's gradients dropped), then everything. Linear probing
            before fine-tuning (Kumar et al., 2022): a new, random classifier's gradients do not
            reach the pretrained features. A fraction, so that it means the same for any budget or set size.
        nonfinite_loss: ``"raise"`` (stop, naming the step and images) or ``"skip"`` (drop the step, count it).
    """

    # Each task's module says which task it trains (the pipelines' task names) and, for a message,
    # the data configs of its real datasets.
    task: ClassVar[str]
    real_data_example: ClassVar[str] = "data=NAME data.root=PATH"

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        *,
        scheduler_interval: str = "epoch",
        warmup_epochs: float = 0.0,
        channels_last: bool = False,
        init_from: str | None = None,
        backbone_lr_mult: float = 1.0,
        head_only_fraction: float = 0.0,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__()
        # Where this model comes from (run name, data configuration), for its checkpoints; the
        # runner sets it (a constructor argument would be instantiated by Hydra: it holds configs).
        self.run_info: dict = {}
        self.data_description: dict = {}
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        self.nonfinite_loss = nonfinite_loss
        if not 0.0 <= head_only_fraction < 1.0:
            raise ValueError(f"head_only_fraction must be in [0, 1), got {head_only_fraction!r}")
        self.head_only_fraction = head_only_fraction
        self.skipped_steps = 0
        self._drop_update = False  # set by checked_loss for a skipped step, cleared before the update
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.warmup_epochs = warmup_epochs
        self.channels_last = channels_last
        self.backbone_lr_mult = backbone_lr_mult
        if init_from:
            # Transfer learning: the backbone (and heads of the same shape) from another model's file.
            transfer_weights(self.model, init_from)  # logs what was and was not loaded

    def setup(self, stage: str) -> None:
        # NHWC convolutions: the layout that oneDNN on CPU and tensor cores on GPU compute fastest.
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Class names, category ids and evaluation preprocessing come from the data; the datamodule
        # says them once, and every checkpoint carries them.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "describe"):
            self.data_description = datamodule.describe()
        # One input of the right shape: the model summary runs it once to count FLOPs.
        self.example_input_array = self.example_input(datamodule)

    def example_input(self, datamodule) -> Any:
        """One input of the shape the network is evaluated at (``None``: unknown)."""
        return None

    def model_meta(self) -> ModelMeta | None:
        """The description of the network as it is now (``None`` for a network not built by one of
        this project's builders)."""
        if build_config(self.model) is None:
            return None
        info = self.data_description
        training = {**self.run_info}
        if self._trainer is not None:
            training.update(epoch=int(self.current_epoch), global_step=int(self.global_step))
        return describe(
            build_config(self.model)["task"],
            self.model,
            info.get("hints"),
            class_names=info.get("class_names"),
            category_ids=info.get("category_ids"),
            training=training,
        )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # With a run seed, the random draws of each training step (dropout, ...) depend on (seed,
        # epoch, batch) only, not on a generator state carried over from earlier steps: a run resumed
        # from a checkpoint then draws exactly what the uninterrupted run did. (Data order and
        # augmentation are seeded by epoch and sample in the datamodule.)
        seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything
        if seed is not None:
            step_seed = int(np.random.SeedSequence([int(seed), self.current_epoch, batch_idx]).generate_state(1)[0])
            random.seed(step_seed)
            np.random.seed(step_seed)
            torch.manual_seed(step_seed)  # CUDA generators too

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The model describes itself: builder and arguments, preprocessing, classes, where it came
        # from; predict / eval / export / quantize need nothing else (vision_mnv2.checkpoint).
        meta = self.model_meta()
        if meta is None:
            info = self.data_description
            meta = ModelMeta(class_names=info.get("class_names"), category_ids=info.get("category_ids"))
        checkpoint[META_KEY] = meta.as_dict()

    def checked_loss(self, loss: torch.Tensor, batch, batch_idx: int) -> torch.Tensor:
        """The loss if it is finite. Otherwise, by ``nonfinite_loss``: ``"raise"`` stops the run with
        the step and the batch's image ids (where the batch carries them), ``"skip"`` drops this
        step's update and counts it.

        Under DDP the processes agree first, so that all raise or all skip together: one process
        leaving the step alone would leave the others waiting in the gradient all-reduce. Lightning
        refuses the ``None`` that skips a step under DDP, so a skipped step returns a zero loss that
        reaches every parameter (DDP expects a gradient for each) and its update is dropped in
        :meth:`on_before_optimizer_step`."""
        finite_here = bool(torch.isfinite(loss))
        finite = finite_here
        if self._trainer is not None and self.trainer.world_size > 1:
            nonfinite = torch.tensor(0.0 if finite_here else 1.0, device=loss.device)
            finite = float(self.trainer.strategy.reduce(nonfinite, reduce_op="sum")) == 0
        if finite:
            return loss
        where = f"epoch {self.current_epoch}, step {self.global_step}, batch {batch_idx}"
        targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if isinstance(targets, (list, tuple)) and targets and isinstance(targets[0], dict) and "image_id" in targets[0]:
            where += f", image ids {[int(t['image_id']) for t in targets]}"
        value = f"({float(loss)})" if not finite_here else "on another process"
        if self.nonfinite_loss == "raise":
            raise FloatingPointError(
                f"non-finite training loss {value} at {where}; lower the learning rate, check the data, "
                "or set module.nonfinite_loss=skip to drop such steps"
            )
        self.skipped_steps += 1
        log.warning("skipped a step with non-finite loss %s at %s; %d skipped so far", value, where, self.skipped_steps)
        self.log("train/skipped_steps", float(self.skipped_steps))
        self._drop_update = True
        zero = sum(parameter.sum() for parameter in self.parameters() if parameter.requires_grad) * 0.0
        return torch.nan_to_num(zero)  # gradients of zero, also for parameters that hold NaN already

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # A skipped step: without gradients the optimiser leaves every parameter, and its own state
        # (momentum, weight decay, step counts), as they were.
        if self._drop_update:
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = None
            self._drop_update = False
        # The heads-only phase: the backbone's gradients are dropped the same way, so that neither
        # its weights nor its optimizer state (momentum, Adam's moments) take in what the random
        # new head sends back, and gradient clipping measures the heads alone. (Batch-norm running
        # statistics still adapt unless model.frozen_bn.)
        if self.global_step < getattr(self, "_head_only_steps", 0):
            for parameter in self._backbone_parameters:
                parameter.grad = None

    def memory_format(self, images: torch.Tensor) -> torch.Tensor:
        """A 4-d image batch in the model's memory layout."""
        if self.channels_last and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def configure_optimizers(self):
        return configure_optimizers(
            self, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval, self.backbone_lr_mult
        )

    def on_train_start(self) -> None:
        self._head_only_steps = 0
        if self.head_only_fraction > 0:
            run = self.trainer.estimated_stepping_batches
            if not math.isfinite(run):  # training data without a length and no trainer.max_steps
                log.warning("module.head_only_fraction=%s needs a run of known length; the backbone trains from "
                            "the start", self.head_only_fraction)  # fmt: skip
            else:
                self._head_only_steps = int(self.head_only_fraction * run)
                self._backbone_parameters = backbone_parameters(self.model)
                log.info("Heads only for the first %d steps (module.head_only_fraction=%s), then the backbone too",
                         self._head_only_steps, self.head_only_fraction)  # fmt: skip
        self._warmup_steps = 0
        if self.warmup_epochs > 0:
            per_epoch = steps_per_epoch(self.trainer)
            if per_epoch is None:  # training data without a length: no epoch to count in
                log.warning(
                    "module.warmup_epochs=%s needs training data of known length; no warm-up", self.warmup_epochs
                )
                return
            self._warmup_steps = int(round(self.warmup_epochs * per_epoch))
            # A small budget of trainer.max_steps is not all warm-up: half of it at most.
            run = self.trainer.estimated_stepping_batches
            if step_budget(self.trainer) is not None and self._warmup_steps > int(run) // 2:
                log.info("Warm-up: %d steps, half of the run's %d (module.warmup_epochs=%s would be %d)",
                         int(run) // 2, int(run), self.warmup_epochs, self._warmup_steps)  # fmt: skip
                self._warmup_steps = int(run) // 2

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        # Warm-up scales this step's learning rate only, and the schedule's own value is put back
        # after the step: schedulers that update from the current rate (cosine, ...) never see it.
        factor = warmup_factor(self.global_step, getattr(self, "_warmup_steps", 0))
        if factor == 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr * factor
        try:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        finally:
            for group, lr in zip(optimizer.param_groups, scheduled):
                group["lr"] = lr
