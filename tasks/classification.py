"""Image classification as a LightningModule."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .module import TaskModule

__all__ = ["ClassificationTask"]


class ClassificationTask(TaskModule):
    """Cross-entropy training (optional label smoothing) with top-1 / top-5 accuracy.

    Args:
        model: the network (``vision_mnv2.models.mobilenet_v2(...)``), built by Hydra.
        num_classes: number of classes, for the metrics.
        optimizer: ``partial`` taking the parameters (Hydra ``_partial_: true``).
        scheduler: ``partial`` taking the optimizer, or ``None``.
        label_smoothing: cross-entropy label smoothing (0.1 in TF-slim's recipe).
        options: the options every task shares (:class:`TaskModule`).
    """

    task = "classification"
    # What an evaluation of a checkpoint that records no data should name: the data configs' layouts.
    real_data_example = (
        "data=imagenet data.root=PATH (train/ and val/ folders of class folders; "
        "data=imagenet_custom data.num_classes=K for other classes)"
    )

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        label_smoothing: float = 0.0,
        **options,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **options)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        top_k = min(5, num_classes)
        metrics = MetricCollection(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                f"top{top_k}": MulticlassAccuracy(num_classes, top_k=top_k, average="micro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")

    def example_input(self, datamodule) -> Tensor | None:
        size = self.data_description.get("hints", {}).get("image_size")
        return torch.zeros(1, 3, int(size), int(size)) if size else None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.memory_format(images))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        self.train_metrics.update(logits.detach(), targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return self.checked_loss(loss, batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        self.log("val/loss", self.criterion(logits, targets), batch_size=images.shape[0], sync_dist=True)
        self.val_metrics.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()
