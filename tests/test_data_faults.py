"""Data that breaks in ways the set-up checks cannot see, data in layouts the loaders must accept, and
the leftovers of a killed data generator."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time

import numpy as np
import pytest
from PIL import Image

from tasks.datamodules import SegmentationDataModule
from tasks.runner import train
from vision_mnv2.data import DatasetError, VOCSegmentation, write_classification_dataset, write_mask
from vision_mnv2.data.checks import image_problem
from vision_mnv2.files import temporary_name

from .helpers import compose_config, tiny_classification_overrides

SIZE = (48, 32)  # width, height


def _photo(path, seed=0, **save):
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return path


def _voc_layout(root, photos: dict[str, str]):
    """A VOC-layout folder whose photos are ``{id: file name}`` (any format), each with a mask."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for seed, (image_id, name) in enumerate(photos.items()):
        if name:
            _photo(root / "JPEGImages" / name, seed)
        write_mask(root / "SegmentationClass" / f"{image_id}.png", np.full((SIZE[1], SIZE[0]), seed % 3, np.uint8))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(photos) + "\n")
    return root


def test_voc_layout_photos_may_be_png_or_jpeg(tmp_path):
    """CamVid-style sets keep PNG photos in the VOC layout; each id's photo is whatever file exists."""
    root = _voc_layout(tmp_path, {"a": "a.png", "b": "b.jpeg", "c": "c.JPG", "d": "d.jpg"})
    dataset = VOCSegmentation(root, "train", 3)
    assert [path.name for path in dataset.images] == ["a.png", "b.jpeg", "c.JPG", "d.jpg"]
    assert all(image.shape == (SIZE[1], SIZE[0], 3) for image, _ in (dataset.load(i) for i in range(4)))
    datamodule = SegmentationDataModule(
        root, num_classes=3, image_size=32, batch_size=2, num_workers=0, val_split="train"
    )
    datamodule.setup("fit")  # the training entry point reaches it too
    assert len(datamodule.train_set) == 4


@pytest.mark.parametrize(
    "photos, message",
    [
        (
            {"a": "a.png", "b": None},
            r"JPEGImages/b: no image file for this id \(tried \.jpg, \.jpeg, \.png, any case\)",
        ),
        ({"a": "a.png", "b": "b.png", "b2": "b.jpg"}, r"JPEGImages/b: 2 image files for this id \(b\.jpg, b\.png\)"),
    ],
    ids=["missing", "two for one id"],
)
def test_voc_layout_names_the_id_without_a_single_photo(tmp_path, photos, message):
    root = _voc_layout(tmp_path, photos)
    if "b2" in photos:  # a second photo of id b, the list naming b only
        (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match=message):
        VOCSegmentation(root, "train", 3)
    assert [p.name for p in VOCSegmentation(root, "train", 3, skip_bad=True).images] == ["a.png"]


def test_a_killed_generator_leaves_nothing_behind_at_the_next_run(tmp_path):
    """Its hidden half-written folder is removed by the next generator; the folder of a generator that
    is still running (here: this process's) is not."""
    root = tmp_path / "synthetic"
    big = {"num_classes": 8, "train_per_class": 1000, "image_size": 96}
    # Forked: the generator starts at once, without importing torch again.
    process = multiprocessing.get_context("fork").Process(target=write_classification_dataset, args=(root,), kwargs=big)
    process.start()
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".synthetic.tmp*/train/*/*.jpg")) and time.monotonic() < deadline:
        assert process.is_alive(), "the generator ended before it could be killed"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    [killed] = tmp_path.glob(".synthetic.tmp*")
    running = tmp_path / (temporary_name("synthetic") + "abcd")
    (running / "train").mkdir(parents=True)

    write_classification_dataset(root, num_classes=2, train_per_class=2, val_per_class=1, image_size=32)
    assert not killed.exists() and running.is_dir()
    assert len(list(root.rglob("*.jpg"))) == 6


def _corrupt_mid_stream(path):
    """Write start-of-frame markers into the middle of a JPEG's entropy-coded data; its header and end
    marker stay intact. (Other damage, such as zeroed bytes, often decodes to garbage without an error.)"""
    data = bytearray(path.read_bytes())
    start_of_scan = data.index(b"\xff\xda")
    scan = start_of_scan + 2 + int.from_bytes(data[start_of_scan + 2 : start_of_scan + 4], "big")
    middle = (scan + len(data) - 2) // 2
    data[middle : middle + 16] = b"\xff\xc0" * 8
    path.write_bytes(bytes(data))


def test_a_jpeg_corrupted_mid_stream_is_named_or_replaced_and_counted(tiny_cls_root, tmp_path):
    root = tmp_path / "cls"
    shutil.copytree(tiny_cls_root, root)
    victim = sorted((root / "train").rglob("*.jpg"))[5]
    _corrupt_mid_stream(victim)
    assert victim.read_bytes().endswith(b"\xff\xd9")
    assert image_problem(victim, "quick") == (None, (64, 64)), "the default check reads headers and end markers"
    assert image_problem(victim, "full")[0].startswith("cannot read image"), "decoding finds it"

    overrides = tiny_classification_overrides(root) + ["trainer.max_epochs=1"]
    with pytest.raises(DatasetError, match=rf"{victim}: cannot read image .*data\.check_images=full \(now quick\)"):
        train(compose_config("train", overrides, tmp_path / "strict"))
    # Replaced by the next sample, and counted across the loader's worker process.
    skip = ["data.skip_bad=true", "data.num_workers=1"]
    result = train(compose_config("train", overrides + skip, tmp_path / "skip"))
    assert result["replaced_samples"] == 1
    assert json.loads((tmp_path / "skip" / "train_metrics.json").read_text())["replaced_samples"] == 1
