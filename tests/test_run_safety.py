"""Training runs through every documented switch, and never ends as if it had worked when it did not."""

from __future__ import annotations

import shutil

import pytest
import torch

from tasks.datamodules import ClassificationDataModule
from tasks.runner import train
from vision_mnv2.data import DatasetError

from .conftest import compose_config, tiny_classification_overrides


@pytest.mark.parametrize(
    "switches",
    [
        ["logger=none"],  # Lightning refuses its learning-rate monitor without a logger
        ["debug=overfit", "trainer.overfit_batches=2", "trainer.max_epochs=2"],  # a sequential sampler, bare indices
        ["debug=fdr"],
    ],
    ids=["logger=none", "debug=overfit", "debug=fdr"],
)
def test_documented_switches_train(tiny_cls_root, tmp_path, switches):
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1", *switches]
    result = train(compose_config("train", overrides, tmp_path))
    assert result["metrics"]["train/loss"] > 0 and "val/top1" in result["metrics"]
    assert (tmp_path / "train_metrics.json").is_file()


def test_no_callbacks_still_trains_and_keeps_a_checkpoint(tiny_cls_root, tmp_path):
    overrides = tiny_classification_overrides(tiny_cls_root, quiet_callbacks=False) + [
        "callbacks=none", "trainer.max_epochs=1",
    ]  # fmt: skip
    result = train(compose_config("train", overrides, tmp_path))
    assert result["last_checkpoint"] and result["metrics"]["val/top1"] >= 0


def test_a_training_set_smaller_than_one_batch_is_an_error(tiny_cls_root, tmp_path):
    """Training drops the incomplete last batch: 32 images in batches of 64 would train nothing, write no
    checkpoint and end as if all went well."""
    overrides = tiny_classification_overrides(tiny_cls_root) + ["data.batch_size=64"]
    message = r"training split has 32 sample\(s\): fewer than one batch of data\.batch_size=64"
    with pytest.raises(DatasetError, match=message):
        train(compose_config("train", overrides, tmp_path / "small"))
    assert not (tmp_path / "small" / "checkpoints").exists()

    root = tmp_path / "cls"
    shutil.copytree(tiny_cls_root, root)
    for victim in sorted((root / "train").rglob("*.jpg"))[:2]:
        victim.write_bytes(b"broken")
    overrides = tiny_classification_overrides(root) + ["data.batch_size=32", "data.skip_bad=true"]
    with pytest.raises(DatasetError, match=r"has 30 sample\(s\) once the 2 bad one\(s\) are left out: fewer than one"):
        train(compose_config("train", overrides, tmp_path / "skipped"))


def test_under_ddp_a_batch_is_counted_per_process(tiny_cls_root, monkeypatch):
    datamodule = ClassificationDataModule(tiny_cls_root, num_classes=4, image_size=64, batch_size=20, num_workers=0)
    datamodule.setup("fit")
    assert len(datamodule.train_dataloader()) == 1, "32 images give one batch of 20 in one process"
    monkeypatch.setattr("tasks.datamodules._distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *args: 0)
    with pytest.raises(DatasetError, match=r"32 sample\(s\), 16 per process on 2 processes: fewer than one batch"):
        datamodule.train_dataloader()
