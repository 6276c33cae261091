"""Task modules that misbehave on purpose, for tests that start training in other processes
(``module._target_=tests.helpers.<name>``)."""

from __future__ import annotations

from tasks.classification import ClassificationTask


class NonFiniteOnRankOne(ClassificationTask):
    """A NaN loss in the first training step of DDP rank 1 only (its images are NaN)."""

    def training_step(self, batch, batch_idx: int):
        images, targets = batch
        if self.global_rank == 1 and self.global_step == 0:
            images = images * float("nan")
        return super().training_step((images, targets), batch_idx)
