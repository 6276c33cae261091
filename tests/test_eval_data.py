"""Which data a checkpoint is scored on, and the errors when that cannot be known."""

from __future__ import annotations

import pytest
import torch

from tasks.cli import with_task_from_checkpoint
from tasks.runner import evaluate
from vision_mnv2.checkpoint import CheckpointError, save_model
from vision_mnv2.models import mobilenet_v2
from vision_mnv2.pipelines import describe

from .helpers import compose_config


def _config(name, overrides, tmp_path):
    return compose_config(name, with_task_from_checkpoint(["tool", *overrides])[1:], tmp_path / "run")


def test_a_checkpoint_without_its_training_data_asks_for_data(tmp_path):
    """A converted classifier records no training data: scoring it on the task's default (generated
    shapes, 8 classes) would first write that set, then fail on 1000 classes."""
    torch.manual_seed(0)
    model = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    meta = describe("classification", model, {"image_size": 64}, training={"converted_from": "model.tflite"})
    ckpt = save_model(tmp_path / "converted.ckpt", model, meta)
    with pytest.raises(CheckpointError, match=r"converted\.ckpt does not record the data it was trained on "
                       r"\(converted from model\.tflite\); say which data to score it on: data=imagenet data\.root=PATH"):  # fmt: skip
        evaluate(_config("eval", [f"ckpt_path={ckpt}"], tmp_path))
    assert not (tmp_path / "run" / "cache").exists(), "nothing generated before the error"


@pytest.mark.parametrize("value", ["abc", "0", "12.5"])
def test_image_size_must_be_a_whole_number_of_pixels(tmp_path, value):
    model = mobilenet_v2(num_classes=3, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "m.ckpt", model, describe("classification", model, {"image_size": 64}))
    from tasks.inference import export

    with pytest.raises(ValueError, match=rf"image_size='?{value}'?: give the working size as a whole number"):
        export(_config("export", [f"ckpt_path={ckpt}", f"image_size={value}"], tmp_path))


def test_the_task_of_a_config_comes_from_its_module_class(tmp_path, monkeypatch):
    """A subclass of a task module (a user's own) trains that task; an unknown module is named with
    the known ones; a user's module that fails to import shows its own import error."""
    from omegaconf import OmegaConf

    from tasks.checkpoint_config import task_of_config

    def task(target: str) -> str:
        return task_of_config(OmegaConf.create({"module": {"_target_": target}}))

    assert task("tasks.segmentation.SegmentationTask") == "segmentation"
    assert task("tests.helpers.NonFiniteOnRankOne") == "classification"  # a ClassificationTask subclass
    for unknown in ("tasks.module.TaskModule", "no_such_package.Task", "Task", "tasks.detection.NoSuchTask"):
        with pytest.raises(ValueError, match=rf"unknown task module '{unknown}'; expected one of .*DetectionTask"):
            task(unknown)
    (tmp_path / "my_tasks.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency"):
        task("my_tasks.MyDetectionTask")
