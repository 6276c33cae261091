"""Synthetic generator, ImageNet-layout dataset, transforms and the classification datamodule."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from tasks.datamodules import ClassificationDataModule
from vision_mnv2.data import (
    SHAPES,
    DatasetError,
    ImageFolderClassification,
    classification_eval_transform,
    classification_train_transform,
    render_scene,
    write_classification_dataset,
)


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic_and_writes_imagenet_layout(tmp_path):
    a = write_classification_dataset(
        tmp_path / "a", num_classes=3, train_per_class=3, val_per_class=2, image_size=48, seed=7
    )
    b = write_classification_dataset(
        tmp_path / "b", num_classes=3, train_per_class=3, val_per_class=2, image_size=48, seed=7
    )
    c = write_classification_dataset(
        tmp_path / "c", num_classes=3, train_per_class=3, val_per_class=2, image_size=48, seed=8
    )
    assert _digest(a) == _digest(b) != _digest(c)
    for split, per_class in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (a / split).iterdir()) == sorted(SHAPES[:3])
        for folder in (a / split).iterdir():
            assert len(list(folder.glob("*.jpg"))) == per_class
    manifest = json.loads((a / "MANIFEST.json").read_text())
    assert manifest["kind"] == "classification" and manifest["seed"] == 7
    # Nothing half-written is left beside the dataset.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_generator_reuses_and_refuses_to_overwrite(tmp_path):
    root = write_classification_dataset(
        tmp_path / "d", num_classes=2, train_per_class=1, val_per_class=1, image_size=32
    )
    stamp = (root / "MANIFEST.json").stat().st_mtime_ns
    write_classification_dataset(root, num_classes=2, train_per_class=1, val_per_class=1, image_size=32)
    assert (root / "MANIFEST.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        write_classification_dataset(root, num_classes=3, train_per_class=1, val_per_class=1, image_size=32)
    user_data = tmp_path / "mine"
    user_data.mkdir()
    (user_data / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        write_classification_dataset(user_data, num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        write_classification_dataset(tmp_path / "e", num_classes=len(SHAPES) + 1)


def test_scene_boxes_enclose_visible_masks():
    rng = np.random.default_rng(3)
    image, objects = render_scene(rng, (120, 160), [0, 1, 2, 3, 4], (0.1, 0.3))
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    assert 1 <= len(objects) <= 5
    for obj in objects:
        ys, xs = np.nonzero(obj.mask)
        assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0 <= obj.category < 5
    # Visible masks never overlap: occluded pixels belong to the object on top.
    total = sum(o.mask.astype(int) for o in objects)
    assert total.max() == 1


def test_dataset_and_transforms(tiny_cls_root):
    train = ImageFolderClassification(tiny_cls_root, "train", classification_train_transform(56))
    image, label = train[5]
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32
    assert train.classes == sorted(SHAPES[:4]) and 0 <= label < 4 and len(train) == 32
    # Normalised with ImageNet statistics: roughly zero-centred, not [0, 255].
    assert -3 < image.mean() < 3 and image.abs().max() < 3.0

    val = ImageFolderClassification(tiny_cls_root, "val", classification_eval_transform(40), classes=train.classes)
    assert val[0][0].shape == (3, 40, 40) and len(val) == 16
    # The eval resize scales with the resolution: 0.875 crop of the short side.
    pipeline = classification_eval_transform(224)
    resized = pipeline(image=np.zeros((300, 400, 3), dtype=np.uint8))["image"]
    assert resized.shape == (3, 224, 224)
    assert pipeline.transforms[0].max_size in (256, [256])


def test_dataset_errors_name_the_path(tiny_cls_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolderClassification(tmp_path / "missing", "train")
    with pytest.raises(DatasetError, match="differ from the expected"):
        ImageFolderClassification(tiny_cls_root, "val", classes=["cat", "dog"])
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty.train.*class folder"):
        ImageFolderClassification(tmp_path / "empty", "train")


def test_datamodule_batches_and_checks(tiny_cls_root, tmp_path):
    dm = ClassificationDataModule(tiny_cls_root, num_classes=4, image_size=48, batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 48, 48) and labels.shape == (8,)
    assert len(dm.val_dataloader().dataset) == 16
    assert dm.class_names == sorted(SHAPES[:4])

    with pytest.raises(DatasetError, match="num_classes is 10"):
        ClassificationDataModule(tiny_cls_root, num_classes=10, num_workers=0).setup("fit")
    with pytest.raises(DatasetError, match="data.root .* does not exist"):
        ClassificationDataModule(tmp_path / "nope", num_classes=4).prepare_data()

    generated = ClassificationDataModule(
        tmp_path / "gen",
        num_classes=2,
        image_size=32,
        num_workers=0,
        generate=lambda root: write_classification_dataset(
            root, num_classes=2, train_per_class=2, val_per_class=1, image_size=32
        ),
    )
    generated.prepare_data()
    generated.setup("fit")
    assert len(generated.train_set) == 4 and len(generated.val_set) == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_is_reproducible_under_one_seed(tiny_cls_root, num_workers):
    import lightning as L  # noqa: PLC0415

    from tasks.datamodules import ClassificationDataModule  # noqa: PLC0415

    def first_batch(seed):
        L.seed_everything(seed, workers=True)
        dm = ClassificationDataModule(
            tiny_cls_root, num_classes=4, image_size=48, batch_size=8, num_workers=num_workers
        )
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(3), first_batch(3)), "same seed, same augmented images"
    assert not torch.equal(first_batch(3), first_batch(4))


def test_loader_workers_are_capped_at_the_machines_cores(tiny_cls_root):
    from tasks.datamodules import ClassificationDataModule

    cores = len(os.sched_getaffinity(0))
    datamodule = ClassificationDataModule(tiny_cls_root, num_classes=4, num_workers=cores + 6)
    assert datamodule.num_workers == cores
    assert ClassificationDataModule(tiny_cls_root, num_classes=4, num_workers=0).num_workers == 0
