"""Bad input: each kind of broken file or annotation is found when the data is set up, and either
stops with an error naming the file and the problem (default) or, with ``skip_bad``, is left out,
counted and logged. Nonsense settings are refused before training."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import MissingConfigException
from PIL import Image

from tasks.datamodules import ClassificationDataModule, DetectionDataModule, SegmentationDataModule
from tasks.runner import train
from vision_mnv2.data import CocoDetection, DatasetError, ImageFolderClassification, VOCSegmentation, write_mask
from vision_mnv2.data.checks import image_problem

from .helpers import compose_config, tiny_classification_overrides

SIZE = (100, 80)  # width, height


def _photo(path, size=SIZE, seed=0, kind="JPEG"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, kind)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_image_check_tells_truncated_corrupt_and_missing_files(tmp_path):
    good = _photo(tmp_path / "good.jpg")
    assert image_problem(good) == (None, SIZE)
    appended = _photo(tmp_path / "motion.jpg")
    appended.write_bytes(appended.read_bytes() + bytes(4096))  # data after the end marker, as motion photos have
    assert image_problem(appended)[0] is None
    _truncate(truncated := _photo(tmp_path / "cut.jpg"))
    assert "truncated" in image_problem(truncated)[0]
    assert image_problem(truncated, "none")[0] is None, "'none' checks existence only"
    _truncate(png := _photo(tmp_path / "cut.png", kind="PNG"))
    assert image_problem(png)[0].startswith("cannot read image")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    assert "cannot identify" in image_problem(tmp_path / "junk.jpg")[0]
    assert image_problem(tmp_path / "nope.jpg") == ("file does not exist", None)
    with pytest.raises(ValueError, match="check_images must be one of"):
        image_problem(good, "thorough")


# --------------------------------------------------------------------------------------------------
# COCO


def _coco(tmp_path, break_it=None):
    """Three 100x80 images with one box each; ``break_it(data, image_dir)`` spoils one thing."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": SIZE[0], "height": SIZE[1]} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10 + i, "image_id": i, "category_id": 4, "bbox": [10, 10, 30, 20], "iscrowd": 0, "area": 600}
            for i in (1, 2, 3)
        ],
        "categories": [{"id": 4, "name": "thing"}],
    }
    for i in (1, 2, 3):
        _photo(image_dir / f"{i}.jpg", seed=i)
    if break_it is not None:
        break_it(data, image_dir)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return image_dir, path


def _set(key, value, index=1, kind="annotations"):
    def spoil(data, image_dir):
        data[kind][index][key] = value

    return spoil


def _drop_key(key, index=1, kind="annotations"):
    def spoil(data, image_dir):
        del data[kind][index][key]

    return spoil


def _spoil_file(action):
    def spoil(data, image_dir):
        action(image_dir / "2.jpg")

    return spoil


# (how to break it, what the error must say, images left, annotations left with skip_bad)
COCO_CASES = {
    "truncated image": (_spoil_file(_truncate), r"2\.jpg: cannot read image .*truncated", 2, 2),
    "corrupt image": (_spoil_file(lambda p: p.write_bytes(b"\x00" * 300)), r"2\.jpg: cannot read image", 2, 2),
    "missing image": (_spoil_file(lambda p: p.unlink()), r"2\.jpg: file does not exist", 2, 2),
    "image size differs": (
        _spoil_file(lambda p: _photo(p, (64, 64))),
        r"2\.jpg: image is 64x64 but the annotation file gives 100x80",
        2,
        2,
    ),
    "annotation without bbox": (_drop_key("bbox"), r"annotations\[1\]: has no 'bbox'", 3, 2),
    "image id of wrong type": (_set("image_id", "2"), r"annotations\[1\]: 'image_id' must be a int, got '2'", 3, 2),
    "image without file name": (_drop_key("file_name", kind="images"), r"images\[1\]: has no 'file_name'", 2, 2),
    "bad image width": (_set("width", "wide", kind="images"), r"images\[1\]: 'width' must be a positive number", 2, 2),
    "negative box": (
        _set("bbox", [10, 10, -5, 20]),
        r"annotation 12 of image 2: bbox \[10, 10, -5, 20\] has zero or negative size",
        3,
        2,
    ),
    "zero-size box": (
        _set("bbox", [10, 10, 30, 0]),
        r"annotation 12 of image 2: bbox .* has zero or negative size",
        3,
        2,
    ),
    "box outside the image": (
        _set("bbox", [120, 10, 30, 20]),
        r"annotation 12 of image 2: bbox .* lies outside the 100x80 image",
        3,
        2,
    ),
    "bbox with three numbers": (_set("bbox", [1, 2, 3]), r"bbox must be \[x, y, width, height\] numbers", 3, 2),
    "unknown category": (
        _set("category_id", 99),
        r"annotation 12 of image 2: category_id 99 is not in the category list",
        3,
        2,
    ),
    "unknown image": (_set("image_id", 7), r"annotation 12 of image 7: image_id 7 is not in the image list", 3, 2),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_bad_coco_samples_stop_set_up_or_are_skipped(tmp_path, case, caplog):
    break_it, message, images_left, annotations_left = COCO_CASES[case]
    image_dir, annotations = _coco(tmp_path, break_it)
    with pytest.raises(DatasetError, match=message) as error:
        CocoDetection(image_dir, annotations)
    assert str(annotations) in str(error.value) and "data.skip_bad=true" in str(error.value)
    with caplog.at_level(logging.INFO):
        dataset = CocoDetection(image_dir, annotations, skip_bad=True)
    assert len(dataset.bad) == 1
    assert len(dataset) == images_left == len(dataset.coco.imgs)
    assert len(dataset.coco.anns) == annotations_left == sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    assert "skipping 1 bad sample(s)" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"instances\.json: not a valid JSON file"),
        ("[]", r"expected a JSON object with 'images'"),
        ('{"images": [], "categories": []}', r"has no 'annotations' list"),
        ('{"images": {}, "annotations": [], "categories": []}', r"'images' must be a list, got a JSON dict"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', r"categories\[0\] has no 'name'"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": [], '
            '"categories": [{"id": 1, "name": "x"}]}',
            "images ids are not unique",
        ),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}', "the dataset has no images"),
        ('{"images": [], "annotations": [], "categories": []}', "the category list is empty"),
    ],
)
def test_malformed_coco_files_cannot_be_skipped(tmp_path, content, message):
    (tmp_path / "images").mkdir()
    path = tmp_path / "instances.json"
    path.write_text(content)
    for skip_bad in (False, True):
        with pytest.raises(DatasetError, match=message):
            CocoDetection(tmp_path / "images", path, skip_bad=skip_bad)


def test_a_dataset_with_every_image_bad_is_an_error_even_when_skipping(tmp_path):
    image_dir, annotations = _coco(tmp_path, lambda data, d: [p.unlink() for p in d.iterdir()])
    with pytest.raises(DatasetError, match="the dataset has no images"):
        CocoDetection(image_dir, annotations, skip_bad=True)


# --------------------------------------------------------------------------------------------------
# VOC segmentation and ImageNet folders


def _voc(tmp_path, break_it=None):
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    for name in "abc":
        _photo(tmp_path / f"JPEGImages/{name}.jpg")
        write_mask(tmp_path / f"SegmentationClass/{name}.png", np.ones((SIZE[1], SIZE[0]), dtype=np.uint8))
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\nb\nc\n")
    if break_it is not None:
        break_it(tmp_path)
    return tmp_path


VOC_CASES = {
    "truncated image": (lambda r: _truncate(r / "JPEGImages/b.jpg"), r"b\.jpg: cannot read image .*truncated"),
    "missing image": (
        lambda r: (r / "JPEGImages/b.jpg").unlink(),
        r"JPEGImages/b: no image file for this id \(tried \.jpg, \.jpeg, \.png, any case\)",
    ),
    "missing mask": (lambda r: (r / "SegmentationClass/b.png").unlink(), r"b\.png: file does not exist"),
    "mask size differs": (
        lambda r: write_mask(r / "SegmentationClass/b.png", np.ones((80, 90), dtype=np.uint8)),
        r"b\.png: mask is 90x80 but its image b\.jpg is 100x80",
    ),
    "mask values out of range": (
        lambda r: write_mask(r / "SegmentationClass/b.png", np.full((80, 100), 9, dtype=np.uint8)),
        r"b\.png: mask values \[9\] are neither a class index \(0\.\.2\) nor the ignore label 255",
    ),
    "corrupt mask": (lambda r: (r / "SegmentationClass/b.png").write_bytes(b"PNG?"), r"b\.png: cannot read mask"),
}


@pytest.mark.parametrize("case", list(VOC_CASES))
def test_bad_voc_samples_stop_set_up_or_are_skipped(tmp_path, case):
    break_it, message = VOC_CASES[case]
    root = _voc(tmp_path, break_it)
    with pytest.raises(DatasetError, match=message) as error:
        VOCSegmentation(root, "train", 3)
    assert "train.txt: 1 bad sample(s)" in str(error.value)
    dataset = VOCSegmentation(root, "train", 3, skip_bad=True)
    assert dataset.ids == ["a", "c"] and len(dataset.bad) == 1
    assert all(mask.shape == (80, 100) for _, mask in (dataset[0], dataset[1]))


def test_mask_values_255_are_the_ignore_label_not_bad(tmp_path):
    root = _voc(tmp_path, lambda r: write_mask(r / "SegmentationClass/b.png", np.full((80, 100), 255, dtype=np.uint8)))
    assert len(VOCSegmentation(root, "train", 3)) == 3


def test_bad_class_folder_images_stop_set_up_or_are_skipped(tiny_cls_root, tmp_path):
    root = tmp_path / "cls"
    shutil.copytree(tiny_cls_root, root)
    victim = sorted((root / "train").rglob("*.jpg"))[3]
    _truncate(victim)
    with pytest.raises(DatasetError, match=rf"{victim.name}: cannot read image .*truncated"):
        ImageFolderClassification(root, "train")
    full = len(ImageFolderClassification(tiny_cls_root, "train"))
    dataset = ImageFolderClassification(root, "train", skip_bad=True)
    assert len(dataset) == full - 1 == len(dataset.targets) and str(victim) not in [p for p, _ in dataset.samples]


def test_missing_root_and_empty_datasets(tmp_path):
    with pytest.raises(DatasetError, match=r"data\.root '.*nowhere' does not exist"):
        DetectionDataModule(tmp_path / "nowhere", num_classes=2).prepare_data()
    with pytest.raises(DatasetError, match=r"data\.root '.*nowhere' does not exist"):
        SegmentationDataModule(tmp_path / "nowhere", num_classes=2).prepare_data()
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty.train"):
        ImageFolderClassification(tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="data.check_images must be one of"):
        DetectionDataModule(tmp_path, num_classes=2, check_images="thorough")


def test_skip_bad_through_the_training_entry_point(tiny_cls_root, tmp_path):
    root = tmp_path / "cls"
    shutil.copytree(tiny_cls_root, root)
    for victim in sorted((root / "train").rglob("*.jpg"))[:2] + sorted((root / "val").rglob("*.jpg"))[:1]:
        victim.write_bytes(b"broken")
    overrides = tiny_classification_overrides(root) + ["trainer.max_epochs=1"]
    with pytest.raises(DatasetError, match="2 bad sample"):
        train(compose_config("train", overrides, tmp_path / "strict"))
    result = train(compose_config("train", overrides + ["data.skip_bad=true"], tmp_path / "skip"))
    assert result["skipped_samples"] == {"train": 2, "val": 1}
    written = json.loads((tmp_path / "skip" / "train_metrics.json").read_text())
    assert written["skipped_samples"] == {"train": 2, "val": 1}


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    "override, message",
    [
        ("backbone.width_mult=0", "width_mult must be a positive number"),
        ("backbone.width_mult=-1", "width_mult must be a positive number"),
        ("backbone.output_stride=12", r"output_stride must be one of \(8, 16, 32\)"),
        ("+head.pool=max", "head.pool='max': the network mobilenet_v2 has no setting 'pool'"),
        ("module.nonfinite_loss=ignore", "nonfinite_loss must be 'raise' or 'skip'"),
        ("data.check_images=thorough", "data.check_images must be one of"),
    ],
)
def test_nonsense_settings_are_refused_before_training(tiny_cls_root, tmp_path, override, message):
    cfg = compose_config("train", tiny_classification_overrides(tiny_cls_root) + [override], tmp_path)
    with pytest.raises(Exception, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists(), "refused before any training"


def test_an_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(MissingConfigException, match=r"(?s)task/segmentation.*classification.*deeplabv3.*ssdlite"):
        compose_config("train", ["task=segmentation"], tmp_path)


def test_a_file_that_breaks_after_set_up(tiny_cls_root, tmp_path, caplog):
    """With skip_bad a training sample that fails to load is replaced by the next one and logged;
    without, the error names the file."""
    root = tmp_path / "cls"
    shutil.copytree(tiny_cls_root, root)
    for skip_bad in (True, False):
        datamodule = ClassificationDataModule(
            root, num_classes=4, image_size=64, batch_size=8, num_workers=0, skip_bad=skip_bad
        )
        datamodule.setup("fit")
        victim = datamodule.train_set.samples[5][0]
        original = Path(victim).read_bytes()
        Path(victim).write_bytes(b"broken")
        try:
            if skip_bad:
                with caplog.at_level(logging.WARNING):
                    batches = list(datamodule.train_dataloader())
                assert sum(len(labels) for _, labels in batches) == len(datamodule.train_set)
                assert f"{victim}: cannot read image" in caplog.text
            else:
                with pytest.raises(DatasetError, match=rf"{Path(victim).name}: cannot read image"):
                    list(datamodule.train_dataloader())
        finally:
            Path(victim).write_bytes(original)
