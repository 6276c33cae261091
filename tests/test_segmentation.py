"""Pascal VOC-layout data, joint augmentation, mIoU against NumPy, multi-scale evaluation, and the
DeepLabv3 task overfitted (trained and evaluated: test_train_then_eval.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.datamodules import SegmentationDataModule
from vision_mnv2.data import (
    IGNORE_INDEX,
    DatasetError,
    VOCSegmentation,
    read_mask,
    voc_palette,
    write_mask,
)
from vision_mnv2.data.segmentation_transforms import (
    segmentation_collate,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from vision_mnv2.metrics import segmentation_confusion_matrix, segmentation_scores
from vision_mnv2.models import deeplabv3_mobilenet_v2, multi_scale_probabilities
from vision_mnv2.models.normalization import NORMALIZATIONS

from .helpers import SEGMENTATION_SHAPES, compose_config

IMAGENET_MEAN = NORMALIZATIONS["imagenet"].mean


# --------------------------------------------------------------------------------------------------
# Data


def test_synthetic_dataset_is_in_voc_layout(seg_root):
    train_ids = (seg_root / "ImageSets/Segmentation/train.txt").read_text().split()
    val_ids = (seg_root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train_ids) == 8 and len(val_ids) == 4
    assert (seg_root / "ImageSets/Segmentation/trainval.txt").read_text().split() == train_ids + val_ids
    with Image.open(seg_root / "SegmentationClass" / f"{train_ids[0]}.png") as png:
        assert png.mode == "P", "VOC masks are palette PNGs"
        assert png.getpalette()[: 3 * 3] == voc_palette()[: 3 * 3] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    values = np.unique(
        np.concatenate([read_mask(seg_root / "SegmentationClass" / f"{i}.png").ravel() for i in train_ids])
    )
    assert set(values) <= {0, 1, 2, 3, IGNORE_INDEX} and 0 in values and IGNORE_INDEX in values
    assert len(set(values) - {0, IGNORE_INDEX}) >= 2, "objects of several classes"

    dataset = VOCSegmentation(seg_root, "train", SEGMENTATION_SHAPES + 1)
    assert dataset.class_names == ["background", "circle", "square", "triangle"]
    image, mask = dataset[0]
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8 and mask.shape == (96, 128)
    # The ignore outline surrounds objects: every object pixel next to background is ignored.
    obj = (mask > 0) & (mask != IGNORE_INDEX)
    assert not (obj[:, 1:] & (mask[:, :-1] == 0)).any()


def _tiny_voc(tmp_path, mask: np.ndarray, image_size=(8, 10)):
    (tmp_path / "JPEGImages").mkdir(parents=True)
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    Image.fromarray(np.zeros((*image_size, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages/a.jpg")
    write_mask(tmp_path / "SegmentationClass/a.png", mask)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\n")
    return tmp_path


def test_bad_masks_and_lists_give_errors_naming_the_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        VOCSegmentation(tmp_path / "nowhere", "train", 3)
    bad = np.zeros((8, 10), dtype=np.uint8)
    bad[0, 0], bad[1, 1] = 7, IGNORE_INDEX
    root = _tiny_voc(tmp_path / "values", bad)
    assert VOCSegmentation(root, "train", 8)[0][1][0, 0] == 7, "valid once there are 8 classes"
    Image.new("RGB", (10, 8)).save(root / "SegmentationClass/a.png")
    with pytest.raises(DatasetError, match="a.png: mask has mode RGB"):
        VOCSegmentation(root, "train", 8)
    with pytest.raises(DatasetError, match=r"val\.txt' does not exist"):
        VOCSegmentation(root, "val", 8)
    root = _tiny_voc(tmp_path / "names", np.zeros((8, 10), dtype=np.uint8))
    with pytest.raises(DatasetError, match="2 class names"):
        VOCSegmentation(root, "train", 3, class_names=["a", "b"])
    (root / "ImageSets/Segmentation/train.txt").write_text("")
    with pytest.raises(DatasetError, match=r"train\.txt lists no images"):
        VOCSegmentation(root, "train", 3)


def _to_pixels(tensor: torch.Tensor) -> np.ndarray:
    """A [0, 1] image tensor (what the pipelines give the network) back to uint8 pixels."""
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    return (tensor * 255).round().clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8)


def _same_label_around(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    height, width = mask.shape
    same = np.ones_like(mask, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + height, dx : dx + width] == mask
    return same


def test_train_transform_moves_image_and_mask_together():
    # Each class paints its own grey level, so the mask can be read back off the image.
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[10:40, 5:30] = 1
    mask[20:55, 45:75] = 2
    image = np.repeat((mask * 100)[..., None], 3, axis=2).astype(np.uint8)
    transform = segmentation_train_transform(72, scale=(0.5, 2.0), hflip=0.5)
    saw_padding = saw_scaled = False
    for seed in range(30):
        np.random.seed(seed)
        transform.set_random_seed(int(rng.integers(1 << 30)))
        out = transform(image=image, mask=mask)
        tensor, result = out["image"], np.asarray(out["mask"])
        assert tensor.shape == (3, 72, 72) and result.shape == (72, 72)
        pixels = _to_pixels(tensor)[..., 0].astype(int)
        padded = result == IGNORE_INDEX
        saw_padding |= bool(padded.any())
        saw_scaled |= bool((result == 2).sum() > (mask == 2).sum())
        assert np.all(np.abs(pixels[padded] - round(255 * IMAGENET_MEAN[0])) <= 1), "padding is the mean pixel"
        # Away from label edges (where the image is interpolated and the mask is not) they agree.
        interior = ~padded & _same_label_around(result)
        assert interior.sum() > 200
        wrong = np.abs(pixels[interior] - result[interior].astype(int) * 100) > 5
        assert not wrong.any(), f"image and mask disagree on {wrong.mean():.1%} of interior pixels"
    assert saw_padding and saw_scaled


def test_eval_transform_and_collate_pad_with_ignore():
    masks = [np.ones((50, 60), dtype=np.uint8), np.full((40, 70), 2, dtype=np.uint8)]
    transform = segmentation_eval_transform(pad_size=64)
    out = transform(image=np.zeros((50, 60, 3), dtype=np.uint8), mask=masks[0])
    assert out["image"].shape == (3, 64, 64)
    out["mask"] = np.asarray(out["mask"])
    assert (
        (out["mask"][:50, :60] == 1).all()
        and (out["mask"][50:] == IGNORE_INDEX).all()
        and (out["mask"][:, 60:] == IGNORE_INDEX).all()
    )
    plain = segmentation_eval_transform()
    batch = [tuple(plain(image=np.zeros((*m.shape, 3), dtype=np.uint8), mask=m).values()) for m in masks]
    images, targets = segmentation_collate(batch)
    assert images.shape == (2, 3, 50, 70) and targets.shape == (2, 50, 70) and targets.dtype == torch.int64
    assert (targets[0, :, 60:] == IGNORE_INDEX).all() and (targets[1, 40:] == IGNORE_INDEX).all()
    assert (targets[1, :40] == 2).all()
    # Images are padded with the normalisation's mean pixel (zero once the network normalises).
    assert torch.allclose(images[0, :, 0, 65], torch.tensor(IMAGENET_MEAN), atol=1e-6)
    assert torch.allclose(images[1, :, 45, 0], torch.tensor(IMAGENET_MEAN), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Metrics


def test_miou_from_accumulated_confusion_matrix_matches_numpy():
    rng = np.random.default_rng(1)
    num_classes = 5
    metric = segmentation_confusion_matrix(num_classes)
    all_pred, all_true, per_batch = [], [], []
    for size in ((2, 17, 23), (3, 9, 31), (1, 40, 8)):  # batches of different sizes
        true = rng.integers(0, num_classes - 1, size=size)  # class 4 never in the ground truth
        true[rng.random(size) < 0.1] = IGNORE_INDEX
        pred = np.where(rng.random(size) < 0.6, true, rng.integers(0, num_classes - 1, size=size))
        pred[pred == IGNORE_INDEX] = 0
        metric.update(torch.from_numpy(pred), torch.from_numpy(true))
        all_pred.append(pred.ravel())
        all_true.append(true.ravel())
        per_batch.append(
            segmentation_scores(
                segmentation_confusion_matrix(num_classes)(torch.from_numpy(pred), torch.from_numpy(true))
            )["mIoU"]
        )
    pred, true = np.concatenate(all_pred), np.concatenate(all_true)
    keep = true != IGNORE_INDEX
    pred, true = pred[keep], true[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (true == c))
        if union:
            ious.append(np.sum((pred == c) & (true == c)) / union)
    scores = segmentation_scores(metric.compute(), ["bg", "a", "b", "c", "never"])
    assert scores["mIoU"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert scores["pixel_acc"] == pytest.approx(np.mean(pred == true), abs=1e-12)
    assert scores["IoU/a"] == pytest.approx(ious[1], abs=1e-12)
    assert np.isnan(scores["IoU/never"]), "a class absent from truth and prediction has no IoU"
    assert scores["mIoU"] != pytest.approx(np.mean(per_batch), abs=1e-6), "not a mean of per-batch values"
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(metric.compute(), ["too", "few"])


def test_multi_scale_flip_probabilities():
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v2(num_classes=4, width_mult=0.35, aspp=False).eval()
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        single = multi_scale_probabilities(model, images)
        assert torch.allclose(single, model(images).softmax(1))
        flipped = multi_scale_probabilities(model, images, flip=True)
        expected = (model(images).softmax(1) + model(images.flip(-1)).flip(-1).softmax(1)) / 2
        assert torch.allclose(flipped, expected, atol=1e-6)
        many = multi_scale_probabilities(model, images, scales=(0.5, 0.75, 1.25), flip=True)
    assert many.shape == (2, 4, 64, 80) and torch.allclose(many.sum(1), torch.ones(2, 64, 80), atol=1e-5)
    half = multi_scale_probabilities(model, images, scales=(0.5,))
    with torch.no_grad():
        small = model(torch.nn.functional.interpolate(images, size=(32, 40), mode="bilinear"))
    expected = torch.nn.functional.interpolate(small, size=(64, 80), mode="bilinear").softmax(1)
    assert torch.allclose(half, expected, atol=1e-6), "logits are resized back before the softmax"
    with pytest.raises(ValueError, match="positive"):
        multi_scale_probabilities(model, images, scales=(0.0,))


# --------------------------------------------------------------------------------------------------
# Task


@pytest.mark.numerics
def test_tiny_deeplab_overfits_a_few_images(seg_root):
    torch.manual_seed(0)
    dataset = VOCSegmentation(seg_root, "train", SEGMENTATION_SHAPES + 1, segmentation_eval_transform())
    images, masks = segmentation_collate([dataset[i] for i in range(4)])
    model = deeplabv3_mobilenet_v2(num_classes=SEGMENTATION_SHAPES + 1, width_mult=0.35, aspp=False)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    metric = segmentation_confusion_matrix(SEGMENTATION_SHAPES + 1)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), masks, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        metric.update(model(images).argmax(1), masks)  # train mode: the batch's own statistics
    scores = segmentation_scores(metric.compute())
    # Measured after 60 steps over 10 seeds (and 2 on 4 other images), ATen's avx2 and default
    # kernels, 1 and 2 threads: the loss falls to 2.2-3.1% of its start and 98.1-98.8% of the
    # pixels are right, while the mIoU spreads over 0.70-0.96: the one small square of these
    # images is learnt last (IoU 0.1-0.9 by seed; the other classes 0.77 or more). Unlearnt, it
    # leaves an mIoU near 0.66; a network that found no object at all scores about 0.25.
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    assert scores["pixel_acc"] > 0.95 and scores["mIoU"] > 0.5, scores


def test_datamodule_batches(seg_root):
    dm = SegmentationDataModule(
        seg_root, num_classes=SEGMENTATION_SHAPES + 1, image_size=64, batch_size=4, num_workers=0, eval_pad_size=None
    )
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 64, 64) and masks.dtype == torch.int64
    val_images, val_masks = next(iter(dm.val_dataloader()))
    assert val_images.shape[-2:] == (96, 128) and val_masks.shape[-2:] == (96, 128)
    with pytest.raises(DatasetError, match="class names"):
        SegmentationDataModule(seg_root, num_classes=21, num_workers=0).setup("fit")


def test_voc_recipe_composes(tmp_path):
    cfg = compose_config("train", ["experiment=deeplabv3_voc", "data.root=/data/VOCdevkit/VOC2012"], tmp_path)
    assert cfg.data.image_size == 513 and cfg.data.eval_pad_size == 513 and list(cfg.data.scale) == [0.5, 2.0]
    assert cfg.data.num_classes == 21 and cfg.data.train_split == "train_aug"
    assert cfg.backbone.output_stride == 16 and cfg.module.scheduler_interval == "step"
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.PolynomialLR" and cfg.scheduler.power == 0.9
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.007
    custom = compose_config(
        "train", ["task=deeplabv3", "data=voc_custom", "data.root=/x", "data.num_classes=3"], tmp_path
    )
    assert custom.data.num_classes == 3 and custom.model.num_classes == 3
