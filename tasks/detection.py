"""Object detection (SSDLite) as a LightningModule, scored with COCOeval every validation epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from vision_mnv2.metrics import CocoMeanAveragePrecision
from vision_mnv2.models.registry import build_config

from .module import TaskModule

__all__ = ["DetectionTask"]


class DetectionTask(TaskModule):
    """Trains a torchvision-style detector (``model(images, targets)`` returns its losses) and
    evaluates it with COCOeval against the validation split's own annotations every validation
    epoch (:class:`CocoMeanAveragePrecision`; the datamodule's ``coco_ground_truth()``, crowd boxes
    and annotated areas included).

    The detections of each evaluation are written in COCO results format to
    ``<run folder>/<results_file>`` (the dataset's category ids).

    Args:
        results_file: name of the detections file in the run folder.
        coco_backend: COCOeval implementation: ``faster_coco_eval`` (fast, for every epoch) or
            ``pycocotools`` (the reference; ``tools/eval.py`` uses it for the official number).
            Both give the same numbers.
        options: the options every task shares (:class:`TaskModule`).
    """

    task = "detection"
    # What an evaluation of a checkpoint that records no data should name: the data configs' layouts.
    real_data_example = (
        "data=coco data.root=PATH (COCO 2017 layout), or data=coco_custom data.root=PATH data.num_classes=K "
        "data.val_images=... data.val_annotations=..."
    )

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        results_file: str = "detections_val.json",
        coco_backend: str = "faster_coco_eval",
        **options,
    ) -> None:
        super().__init__(model, optimizer, scheduler, **options)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.coco_map: CocoMeanAveragePrecision | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Outside a Trainer (tools/benchmark.py times training steps by hand) there is nothing to score.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "coco_ground_truth"):
            self.coco_map = CocoMeanAveragePrecision(
                datamodule.coco_ground_truth(),
                self.data_description["category_ids"],
                backend=self.hparams.coco_backend,
                results_file=Path(self.trainer.default_root_dir) / self.hparams.results_file,
            )

    def example_input(self, datamodule) -> tuple[list[Tensor]] | None:
        config = build_config(self.model)
        if config is None or "image_size" not in config["args"]:
            return None
        size = int(config["args"]["image_size"])
        # forward takes one argument, a list of images; Lightning unpacks a tuple into arguments.
        return ([torch.zeros(3, size, size)],)

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
        if self.coco_map is None:
            raise TypeError(
                "DetectionTask scores against the validation split's COCO annotations: evaluate it with a "
                "datamodule that has coco_ground_truth() (DetectionDataModule)"
            )
        self.coco_map.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self.coco_map.update(self.model(images), targets)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches: no score, no results file
            self.coco_map.reset()
            return
        # Gathers every process's detections; COCOeval on rank 0, which writes the results file,
        # and every process logs its numbers.
        stats = self.coco_map.compute()
        self.coco_map.reset()
        self.log("val/mAP", stats.pop("mAP"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in stats.items()})

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()
