"""Object detection (SSDLite) as a LightningModule, scored with pycocotools' COCOeval."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vision_mnv2.metrics import CocoEvaluator

from .module import TaskModule

__all__ = ["DetectionTask"]


class DetectionTask(TaskModule):
    """Trains a torchvision-style detector (``model(images, targets)`` returns its losses) and
    evaluates it with COCOeval on the validation set's own annotation file every validation epoch.

    The detections of each evaluation are written in COCO results format to
    ``<run folder>/detections_val.json`` (original category ids). ``options``: the options every
    task shares (:class:`TaskModule`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        results_file: str = "detections_val.json",
        **options,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **options)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.evaluator: CocoEvaluator | None = None

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        batch_size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=batch_size)
        return self.checked_loss(loss, batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        dataset = self.trainer.datamodule.val_set
        self.evaluator = CocoEvaluator(dataset.coco, dataset.label_to_category_id)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        predictions = self.model(images)
        self.evaluator.update([int(t["image_id"]) for t in targets], predictions)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.evaluator.synchronize()  # DDP: rank 0 gathers every process's detections
        if self.trainer.is_global_zero:
            self.evaluator.write_results(Path(self.trainer.default_root_dir) / self.hparams.results_file)
        stats = self.evaluator.compute()  # COCOeval on rank 0; every process gets its numbers to log
        self.log("val/mAP", stats.pop("mAP"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in stats.items()})

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()
