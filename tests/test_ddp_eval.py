"""Evaluation under DDP counts every validation image exactly once: two CPU processes give the same
top-1, COCO mAP and mIoU as one process on the same checkpoint and data.

The validation splits have an odd number of images, so a padding DistributedSampler (Lightning's
default) would score one image twice and the numbers would differ."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tasks.runner import evaluate, train
from vision_mnv2.data import write_classification_dataset, write_detection_dataset, write_segmentation_dataset

from .helpers import REPO_ROOT, compose_config, subprocess_env, tiny_task_overrides

# task: (write the dataset, data.num_classes, image size, the headline metric)
TASKS = {
    "classification": (
        lambda root: write_classification_dataset(root, num_classes=3, train_per_class=4, val_per_class=5, image_size=64, seed=3),
        3, 64, "val/top1",
    ),
    "ssdlite": (
        lambda root: write_detection_dataset(root, num_classes=3, train_images=8, val_images=7, image_size=(96, 128), seed=3),
        3, 128, "val/mAP",
    ),
    "deeplabv3": (
        lambda root: write_segmentation_dataset(root, num_classes=3, train_images=8, val_images=5, image_size=(96, 128), seed=3),
        4, 96, "val/mIoU",
    ),
}  # fmt: skip


@pytest.mark.parametrize("task", list(TASKS))
def test_two_process_evaluation_equals_one_process(task, tmp_path):
    write, num_classes, image_size, headline = TASKS[task]
    root = write(tmp_path / "data")
    overrides = tiny_task_overrides(task, root, num_classes, image_size) + [
        "trainer.max_epochs=1", "++data.eval_batch_size=2",
    ]  # fmt: skip
    if task == "ssdlite":  # one epoch learns little: keep low-scoring boxes so that the numbers are not all 0
        overrides += ["head.score_thresh=0.0", "trainer.max_epochs=3"]
    if task == "deeplabv3":
        overrides.append("++data.eval_pad_size=null")
    quiet = ["callbacks.progress_bar=null", "callbacks.model_summary=null"]
    checkpoint = train(compose_config("train", overrides + quiet, tmp_path / "train"))["last_checkpoint"]
    # One thread here and in each DDP process, so that every image goes through the same kernels
    # in both runs: the batches pair images otherwise (0 and 1 here, 0 and 2 on rank 0), but on
    # CPU a batch of same-size images is computed image by image. The numbers are then equal
    # however rounding falls on this CPU, not only close.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate(compose_config("eval", overrides + [f"ckpt_path={checkpoint}"], tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)

    command = [
        sys.executable, "tools/eval.py", *overrides, f"ckpt_path={checkpoint}", "trainer=ddp", "trainer.devices=2",
        f"hydra.run.dir={tmp_path / 'ddp'}",
    ]  # fmt: skip
    env = subprocess_env(tmp_path, processes=2, OMP_NUM_THREADS="1")
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list((tmp_path / "ddp").glob("*_process_1.log")), "a second process ran"
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["metrics"]
    assert 0.0 < single[headline] < 1.0, "a number that an image counted twice would move"
    names = [name for name in single if name != "val/loss"]
    assert {name: ddp[name] for name in names} == pytest.approx({name: single[name] for name in names}, abs=1e-6)


def test_a_split_smaller_than_the_process_count_stops_every_process(tmp_path):
    """One validation image for two processes: one would get no batch, skip its evaluation loop and
    leave the other waiting at the epoch-end synchronisation; both stop with a clear error instead.
    (Batches of 2, so that the 2 training images per process make a batch.)"""
    root = write_segmentation_dataset(
        tmp_path / "data", num_classes=3, train_images=4, val_images=1, image_size=(64, 64), seed=1
    )
    command = [
        sys.executable, "tools/train.py", *tiny_task_overrides("deeplabv3", root, 4, 64), "trainer=ddp", "trainer.devices=2",
        "trainer.max_epochs=1", "data.batch_size=2", "++data.eval_pad_size=null", "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        f"hydra.run.dir={tmp_path / 'ddp'}",
    ]  # fmt: skip
    env = subprocess_env(tmp_path, processes=2)
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "the evaluation split has 1 image(s), fewer than the 2 processes" in run.stderr + run.stdout
