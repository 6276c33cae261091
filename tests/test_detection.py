"""SSD augmentation keeps boxes on their objects; the detection data module's batches and their order
(the SSDLite task trained and evaluated: test_train_then_eval.py)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from tasks.datamodules import DetectionDataModule
from tasks.optim import backbone_parameters
from tasks.runner import build
from vision_mnv2.data.detection_transforms import SSDRandomIoUCrop, SSDTrainTransform

from .helpers import compose_config, learning_rates_by_part


def _white_boxes_image(boxes, size=(120, 160)):
    image = np.zeros((*size, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes.astype(int):
        image[y0:y1, x0:x1] = 255
    return image


def _assert_boxes_cover_white(image, boxes):
    for x0, y0, x1, y1 in np.round(boxes).astype(int):
        patch = image[y0:y1, x0:x1]
        assert patch.size and patch.mean() > 200, (x0, y0, x1, y1)


BOXES = np.array([[10, 20, 50, 60], [90, 30, 150, 100]], dtype=np.float32)


def _sample(image, boxes):
    return {
        "image": tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=image.shape[:2]),
        "labels": torch.arange(1, len(boxes) + 1),
    }


def _finetune_preset_transform(tmp_path) -> SSDTrainTransform:
    """The training augmentation the detection fine-tuning preset's data module configures."""
    cfg = compose_config(
        "train", ["experiment=finetune_ssdlite_custom", "data.root=/nowhere", "data.num_classes=2"], tmp_path
    )
    data = instantiate(cfg.data)
    return SSDTrainTransform(data.image_size, **data.augment)


def test_finetune_preset_zooms_out_to_at_most_twice_the_side(tmp_path):
    """The detection fine-tuning preset's data module builds a zoom-out that, half the time, puts
    the photo on a canvas of 1x to 2x its side, never more (4x cost cards their ranks:
    docs/BENCHMARKS.md)."""
    transform = _finetune_preset_transform(tmp_path)
    image = _white_boxes_image(BOXES)
    torch.manual_seed(0)
    ratios = np.array([transform.zoom_out(_sample(image, BOXES))["image"].shape[-1] / 160 for _ in range(400)])
    zoomed = ratios[ratios > 1]
    assert 0.4 < len(zoomed) / len(ratios) < 0.6
    assert zoomed.max() <= 2.0 and zoomed.max() > 1.8 and zoomed.min() < 1.2


def test_finetune_preset_crops_half_the_photos(tmp_path):
    """The detection fine-tuning preset's IoU crop cuts about half the photos (torchvision's SSD
    recipe: every photo, but for the 1 in 7 draws that keep the whole image). Crops enlarge the
    objects past the sizes of whole photos; cropping every photo cost the cards 12 points of mAP
    in a few hundred steps (docs/BENCHMARKS.md)."""
    preset = _finetune_preset_transform(tmp_path)
    image = _white_boxes_image(BOXES)

    def cropped_fraction(transform):
        torch.manual_seed(0)
        outputs = [transform.crop(_sample(image, BOXES))["image"] for _ in range(400)]
        return np.mean([tuple(out.shape[-2:]) != image.shape[:2] for out in outputs])

    # 0.5 x 6/7 = 0.43 expected (sd 0.025 over 400 photos); the recipe's default, 6/7 = 0.86.
    assert 0.33 < cropped_fraction(preset) < 0.53
    assert cropped_fraction(SSDTrainTransform(preset.image_size)) > 0.75


def test_finetune_preset_learning_rates(tmp_path):
    """The detection fine-tuning preset's optimizer, as built: the new heads (SSD's extra layers
    included) at 3e-3 and the backbone's trainable stages at 0.1x that, 3e-4; the stem and first
    two stages frozen, in no group. The heads at 1e-3 were under-trained in a few hundred steps
    and the backbone at 1e-3 lost its features (docs/BENCHMARKS.md)."""
    cfg = compose_config(
        "train",
        ["experiment=finetune_ssdlite_custom", "data.root=/nowhere", "data.num_classes=2", "backbone.width_mult=0.35"],
        tmp_path,
    )
    _, module, _ = build(cfg, with_loggers=False)
    rates, in_groups = learning_rates_by_part(module)
    assert sorted(rates["heads"]) == pytest.approx([3e-3]) and sorted(rates["backbone"]) == pytest.approx([3e-4])
    frozen = [p for p in module.model.parameters() if not p.requires_grad]
    backbone = {id(p) for p in backbone_parameters(module.model)}
    assert frozen and all(id(p) in backbone for p in frozen)
    assert in_groups == len(list(module.model.parameters())) - len(frozen)


def _coordinates_image(boxes, size=(120, 160)):
    """Channels 0 and 1: each pixel's x and y in this image; channel 2: 255 on the objects."""
    image = np.zeros((*size, 3), dtype=np.uint8)
    image[..., 0] = np.arange(size[1])[None, :]
    image[..., 1] = np.arange(size[0])[:, None]
    for x0, y0, x1, y1 in boxes.astype(int):
        image[y0:y1, x0:x1, 2] = 255
    return image


def test_zoom_out_and_crop_keep_boxes_on_their_objects():
    """torchvision's zoom-out and IoU crop as SSDTrainTransform configures them: boxes follow their
    objects; the crop keeps exactly the boxes whose centre it contains, clipped to it."""
    fill = (255, 255, 0)  # no pixel of the image has x = 255
    transform = SSDTrainTransform(96, zoom_out_prob=1.0, max_zoom_out=3.0, crop_prob=1.0, fill=fill)
    torch.manual_seed(0)
    image = _coordinates_image(BOXES)
    cropped_some = False
    for _ in range(40):
        zoomed = transform.zoom_out(_sample(image, BOXES))
        zoomed_image, zoomed_boxes = zoomed["image"].permute(1, 2, 0).numpy(), zoomed["boxes"].numpy()
        assert zoomed_image.shape[0] >= 120 and zoomed_image.shape[1] >= 160
        offset = zoomed_boxes[0, :2] - BOXES[0, :2]  # where the image lies on the canvas
        np.testing.assert_array_equal(zoomed_boxes, BOXES + np.tile(offset, 2))
        np.testing.assert_array_equal(zoomed_image[int(offset[1]), int(offset[0])], [0, 0, 0])
        cropped = v2.SanitizeBoundingBoxes()(transform.crop(zoomed))
        cropped_image, boxes = cropped["image"].permute(1, 2, 0).numpy(), cropped["boxes"].numpy()
        height, width = cropped_image.shape[:2]
        cropped_some |= (height, width) != zoomed_image.shape[:2]
        # The crop's place on the canvas, from a pixel of the image that it holds.
        row, column = (index[0] for index in np.nonzero(cropped_image[..., 0] != 255))
        x, y = cropped_image[row, column, :2].astype(float) + offset
        left, top = x - column, y - row
        centres = (zoomed_boxes[:, :2] + zoomed_boxes[:, 2:]) / 2
        inside = (centres[:, 0] > left) & (centres[:, 0] < left + width)
        inside &= (centres[:, 1] > top) & (centres[:, 1] < top + height)
        assert inside.any() and cropped["labels"].tolist() == [i + 1 for i in np.flatnonzero(inside)]
        expected = np.clip(zoomed_boxes[inside] - [left, top, left, top], 0, [width, height, width, height])
        np.testing.assert_allclose(boxes, expected)
        for x0, y0, x1, y1 in np.round(boxes).astype(int):
            assert cropped_image[y0:y1, x0:x1, 2].mean() > 200, "the box covers its object"
    assert cropped_some


def _crop_statistics(crop, draws=300):
    """Share of whole images kept, crop areas (share of the image) and, per IoU, the share of crops
    that reach it with a box they keep, over ``draws`` crops of one 160x120 image with two boxes."""
    sample = _sample(np.zeros((120, 160, 3), dtype=np.uint8), BOXES)
    boxes = sample["boxes"].as_subclass(torch.Tensor)
    torch.manual_seed(0)
    areas, best_ious = [], []
    for _ in range(draws):
        params = crop.make_params([sample["image"], sample["boxes"]])
        if not params:
            areas.append(1.0)
            best_ious.append(0.0)
            continue
        left, top, width, height = params["left"], params["top"], params["width"], params["height"]
        areas.append(width * height / (160 * 120))
        window = torch.tensor([[left, top, left + width, top + height]], dtype=torch.float32)
        best_ious.append(float(box_iou(window, boxes[params["is_within_crop_area"]]).max()))
    areas, best_ious = np.array(areas), np.array(best_ious)
    return np.concatenate(
        [
            [np.mean(areas == 1.0)],
            np.quantile(areas, [0.25, 0.5, 0.75]),
            [np.mean(best_ious >= t) for t in (0.1, 0.3, 0.5, 0.7)],
        ]
    )


def test_batched_crop_draws_the_crops_torchvision_draws():
    """SSDRandomIoUCrop tries its crops all at once; what it returns is distributed as torchvision's
    RandomIoUCrop's (whole images kept, crop sizes, IoU reached), within sampling noise."""
    ours = _crop_statistics(SSDRandomIoUCrop(trials=50))
    torchvision = _crop_statistics(v2.RandomIoUCrop(trials=50))
    np.testing.assert_allclose(ours, torchvision, atol=0.1)
    assert 0.1 < ours[0] < 0.3 and ours[-2] > 0.15, "some crops kept whole, some reach IoU 0.5"


def test_same_seed_gives_the_same_augmentation_and_leaves_torch_generator_alone():
    transform = SSDTrainTransform(96, zoom_out_prob=0.5, max_zoom_out=2.0, crop_prob=1.0)
    image, labels = _white_boxes_image(BOXES), np.array([1, 2])
    torch.manual_seed(123)
    state = torch.get_rng_state()

    def augmented(seed):
        transform.set_random_seed(seed)
        return [transform(image, BOXES, labels) for _ in range(3)]

    first, again, other = augmented(7), augmented(7), augmented(8)
    for (a_image, a_boxes, a_labels), (b_image, b_boxes, b_labels) in zip(first, again):
        assert torch.equal(a_image, b_image) and np.array_equal(a_boxes, b_boxes) and np.array_equal(a_labels, b_labels)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other)), "another seed, other boxes"
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, first[1:])), "successive calls differ"
    assert torch.equal(torch.get_rng_state(), state), "the caller's torch generator is untouched"


def test_full_train_transform_output():
    transform = SSDTrainTransform(96, zoom_out_prob=1.0, max_zoom_out=2.0, crop_prob=1.0, photometric_prob=0.0, seed=3)
    survived = 0
    for _ in range(20):
        tensor, boxes, labels = transform(_white_boxes_image(BOXES), BOXES, np.array([1, 2]))
        assert tensor.shape == (3, 96, 96) and tensor.dtype == torch.float32 and 0 <= tensor.min() <= tensor.max() <= 1
        assert len(boxes) == len(labels)
        survived += len(boxes)
        image = (tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        for x0, y0, x1, y1 in np.round(boxes).astype(int):
            assert image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].mean() > 150  # resize blurs the edges
    assert survived >= 20, "boxes must survive augmentation (albumentations can silently drop them)"


def test_datamodule_batches_are_lists(det_root):
    dm = DetectionDataModule(det_root, num_classes=3, image_size=128, batch_size=4, num_workers=0)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 128, 128)
    assert set(targets[0]) == {"boxes", "labels", "image_id"}
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images[0].shape == (3, 96, 128), "evaluation keeps the original size"
    with pytest.raises(ValueError, match="lists 3 categories but data.num_classes is 80"):
        DetectionDataModule(det_root, num_classes=80, num_workers=0).setup("fit")


def _first_batch(root, seed, workers, start_epoch=0):
    L.seed_everything(seed)
    datamodule = DetectionDataModule(root, num_classes=3, image_size=64, batch_size=4, num_workers=workers)
    datamodule.setup("fit")
    datamodule.start_epoch = start_epoch
    loader = datamodule.train_dataloader()
    batches = iter(loader)  # as Lightning does: the workers start drawing before set_epoch
    loader.sampler.set_epoch(start_epoch)
    return next(batches)


def test_augmented_batches_depend_on_the_seed_and_epoch_only(det_root):
    """Per-sample seeding reaches torchvision's transforms in the loader workers: the same seed gives
    the same images and boxes with 0 or 2 workers; a loader told to start at epoch 2 gives epoch 2's
    first batch (a resumed run with persistent workers)."""
    images, targets = _first_batch(det_root, 3, workers=0)
    for other_images, other_targets in (_first_batch(det_root, 3, workers=2), _first_batch(det_root, 3, workers=0)):
        assert all(torch.equal(a, b) for a, b in zip(images, other_images))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, other_targets))
    other_images, _ = _first_batch(det_root, 4, workers=0)
    assert not all(torch.equal(a, b) for a, b in zip(images, other_images))

    L.seed_everything(3)
    uninterrupted = DetectionDataModule(det_root, num_classes=3, image_size=64, batch_size=4, num_workers=0)
    uninterrupted.setup("fit")
    loader = uninterrupted.train_dataloader()
    loader.sampler.set_epoch(2)
    epoch_2_images, epoch_2_targets = next(iter(loader))
    resumed_images, resumed_targets = _first_batch(det_root, 3, workers=2, start_epoch=2)
    assert [int(t["image_id"]) for t in resumed_targets] == [int(t["image_id"]) for t in epoch_2_targets]
    assert all(torch.equal(a, b) for a, b in zip(resumed_images, epoch_2_images))
    assert [int(t["image_id"]) for t in targets] != [int(t["image_id"]) for t in epoch_2_targets]
