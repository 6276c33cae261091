"""Semantic segmentation (DeepLabv3) as a LightningModule, scored by mIoU over the whole val set."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vision_mnv2.metrics import segmentation_confusion_matrix, segmentation_scores
from vision_mnv2.models import multi_scale_probabilities

from .module import TaskModule

__all__ = ["SegmentationTask", "check_training_batch_size"]


def check_training_batch_size(batch_size: int, processes_normalised_together: int = 1) -> None:
    """Refuse a batch too small to train DeepLabv3 (PyTorch would stop at the first training step
    with "Expected more than 1 value per channel when training"): the head's image-pooling branch
    averages each image to one value per channel, and the batch norm after it needs more than one
    value per channel. ``processes_normalised_together``: the DDP processes whose batches one
    batch-norm layer normalises together (all of them with SyncBatchNorm, else 1)."""
    if batch_size * processes_normalised_together >= 2:
        return
    raise ValueError(
        f"data.batch_size={batch_size}: segmentation cannot train on batches of one image. The head's "
        "image-pooling branch averages each image to one value per channel, and its batch norm needs more than "
        "one value per channel to normalise. Use data.batch_size=2 or more (per process under DDP, or set "
        "trainer.sync_batchnorm=true to normalise over every process's batch); training drops an incomplete "
        "last batch, so no batch is smaller than data.batch_size"
    )


class SegmentationTask(TaskModule):
    """Per-pixel cross-entropy (ignore label excluded) and, on validation, one confusion matrix
    accumulated over every pixel of the split, from which mIoU, pixel accuracy, mean class accuracy
    and per-class IoU are computed at the end of the epoch.

    Args:
        model: maps N x 3 x H x W images to N x C x H x W logits.
        num_classes: classes including the background.
        ignore_index: label of pixels that count neither in the loss nor in the metrics.
        eval_scales / eval_flip: multi-scale and mirrored evaluation (``[1.0]`` and ``False``:
            single scale, as in the paper's headline numbers).
        options: the options every task shares (:class:`TaskModule`); the schedule steps per
            iteration by default (DeepLab's poly).
    """

    task = "segmentation"
    # What an evaluation of a checkpoint that records no data should name: the data configs' layouts.
    real_data_example = "data=voc data.root=PATH (VOC2012 layout), or data=voc_custom data.root=PATH data.num_classes=K"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "step",
        ignore_index: int = 255,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        **options,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval=scheduler_interval, **options)
        # A plain list, not Hydra's ListConfig, so the checkpoint loads with weights_only=True.
        eval_scales = [float(scale) for scale in eval_scales]
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.ignore_index = ignore_index
        self.eval_scales = tuple(eval_scales)
        self.eval_flip = bool(eval_flip)
        self.confusion = segmentation_confusion_matrix(num_classes, ignore_index)

    def on_fit_start(self) -> None:
        # Here rather than at set-up: Lightning has converted batch norm to SyncBatchNorm by now
        # (trainer.sync_batchnorm=true), which decides how many values the layers see.
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None)
        if batch_size is not None:
            synced = any(isinstance(module, nn.SyncBatchNorm) for module in self.model.modules())
            check_training_batch_size(int(batch_size), self.trainer.world_size if synced else 1)

    def example_input(self, datamodule) -> Tensor | None:
        # Validation pads to this size; without padding (images of one size), the training crop.
        size = self.data_description.get("hints", {}).get("pad_to") or getattr(datamodule, "image_size", None)
        return torch.zeros(1, 3, int(size), int(size)) if size else None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.memory_format(images))

    def loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        return F.cross_entropy(logits, masks, ignore_index=self.ignore_index)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return self.checked_loss(loss, batch, batch_idx)

    def predict_probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities at the input size, with the configured scales and flip."""
        return multi_scale_probabilities(self, images, self.eval_scales, self.eval_flip)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, masks = batch
        if self.eval_scales == (1.0,) and not self.eval_flip:
            logits = self(images)
            self.log("val/loss", self.loss(logits, masks), batch_size=images.shape[0], sync_dist=True)
            predictions = logits.argmax(dim=1)
        else:
            predictions = self.predict_probabilities(images).argmax(dim=1)
        self.confusion.update(predictions, masks)

    def on_validation_epoch_end(self) -> None:
        # compute() sums the matrices of all processes under DDP.
        confusion = self.confusion.compute()
        self.confusion.reset()
        scores = segmentation_scores(confusion, self.data_description.get("class_names"))
        self.log("val/mIoU", scores.pop("mIoU"), prog_bar=True)
        self.log_dict({f"val/{name}": value for name, value in scores.items()})

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()
