"""A classifier's preprocessing is a recorded choice: ``crop`` (the central fraction, TF-slim's and
torchvision's evaluation) or ``resize`` (the whole photo, as Google's label_image and Coral examples
feed their models). The checkpoint records it; predict, eval and exports honour it; predict and
export take ``preprocessing.*`` in its place and log that."""

from __future__ import annotations

import json
import logging

import albumentations as A
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import vision_mnv2
from tasks.checkpoint_config import evaluation_data
from tasks.cli import with_task_from_checkpoint
from tasks.datamodules import ClassificationDataModule
from tasks.inference import export, predict
from vision_mnv2.checkpoint import read_checkpoint, save_model
from vision_mnv2.models import deeplabv3_mobilenet_v2, mobilenet_v2
from vision_mnv2.pipelines import describe

from .helpers import compose_config

SIZE = 48
CLASSES = ["a", "b", "c"]


def _tool_config(name: str, overrides: list[str], output_dir):
    return compose_config(name, with_task_from_checkpoint(["tool", *overrides])[1:], output_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photos wider than tall (a central crop and the whole photo differ), in the ImageNet layout."""
    root = tmp_path_factory.mktemp("wide_photos")
    generator = np.random.default_rng(3)
    for split in ("train", "val"):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(2):
                # Left and right thirds differ from the middle: what a centre crop leaves out.
                image = generator.integers(0, 256, (60, 96, 3), dtype=np.uint8)
                image[:, :32] //= 3
                image[:, 64:] = 255 - image[:, 64:] // 2
                Image.fromarray(image).save(folder / f"{number}.png")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same network saved twice, recording each choice."""
    folder = tmp_path_factory.mktemp("preprocessing_checkpoints")
    torch.manual_seed(0)
    model = mobilenet_v2(width_mult=0.35, num_classes=len(CLASSES))
    # Batch-norm statistics measured on random images (a fresh or randomly drawn network gives every
    # photo the same pooled features), and a head large enough that the photo decides the scores.
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(16, 3, SIZE, SIZE))
        model.eval().classifier[1].weight.normal_(0, 0.05)
    saved = {}
    for mode in ("crop", "resize"):
        meta = describe("classification", model, {"image_size": SIZE, "mode": mode}, class_names=CLASSES)
        saved[mode] = save_model(folder / f"{mode}.ckpt", model, meta)
    return saved


def _photo(photos) -> np.ndarray:
    return np.array(Image.open(photos / "val" / "a" / "0.png").convert("RGB"))


def test_the_checkpoint_records_the_choice_and_the_pipeline_fits_photos_by_it(checkpoints, photos):
    image = _photo(photos)
    whole = torch.from_numpy(A.Resize(SIZE, SIZE)(image=image)["image"]).permute(2, 0, 1).float() / 255
    short_side = round(SIZE / 0.875)
    resized = A.SmallestMaxSize(max_size=short_side)(image=image)["image"]
    crop = torch.from_numpy(A.CenterCrop(SIZE, SIZE)(image=resized)["image"]).permute(2, 0, 1).float() / 255

    _, meta = read_checkpoint(checkpoints["resize"])
    assert meta.preprocessing["mode"] == "resize" and meta.preprocessing["resize_size"] == [SIZE, SIZE]
    assert read_checkpoint(checkpoints["crop"])[1].preprocessing["crop_fraction"] == 0.875
    tensors = {mode: vision_mnv2.load(path).preprocess(image)[0] for mode, path in checkpoints.items()}
    torch.testing.assert_close(tensors["resize"], whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(tensors["crop"], crop, atol=1e-6, rtol=0)
    assert (tensors["resize"] - tensors["crop"]).abs().mean() > 0.05  # the photo's sides matter here


def test_predict_takes_preprocessing_settings_and_logs_them(checkpoints, photos, tmp_path, caplog):
    def top5(checkpoint, extra, name):
        overrides = [f"ckpt_path={checkpoint}", f"input={photos / 'val' / 'a'}", f"output_dir={tmp_path / name}"]
        return json.loads(predict(_tool_config("predict", overrides + extra, tmp_path / f"run_{name}")).read_text())

    with caplog.at_level(logging.INFO):
        overridden = top5(checkpoints["crop"], ["preprocessing.mode=resize"], "overridden")
    assert "crop.ckpt: preprocessing.mode=resize (recorded: crop)" in caplog.text
    recorded = top5(checkpoints["resize"], [], "recorded")
    cropped = top5(checkpoints["crop"], [], "cropped")
    scores = {name: [[e["score"] for e in r["top5"]] for r in rs] for name, rs in [("o", overridden), ("r", recorded), ("c", cropped)]}  # fmt: skip
    np.testing.assert_allclose(scores["o"], scores["r"], atol=1e-5)
    assert np.abs(np.array(scores["c"]) - np.array(scores["r"])).max() > 0.01


def test_exports_and_eval_carry_the_choice(checkpoints, photos, tmp_path):
    checkpoint = checkpoints["crop"]
    # Export with the choice changed: the description in the file says resize, and the export's
    # pipeline fits photos as the checkpoint's does with the same setting.
    overrides = [f"ckpt_path={checkpoint}", f"export.file={tmp_path / 'resize.onnx'}", "preprocessing.mode=resize"]
    path = export(_tool_config("export", overrides, tmp_path / "export"))
    stored = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["preprocessing"])
    assert stored["mode"] == "resize"
    image = _photo(photos)
    exported = vision_mnv2.load(path)(image)[0]["probabilities"]
    ours = vision_mnv2.load(checkpoint, preprocessing={"mode": "resize"})(image)[0]["probabilities"]
    torch.testing.assert_close(exported, ours, atol=1e-4, rtol=1e-3)

    # Eval scores a converted-style checkpoint on the data it names, fitted as the checkpoint says,
    # unless the command says otherwise.
    _, meta = read_checkpoint(checkpoints["resize"])
    for extra, expected in (([], "resize"), (["data.eval_preprocessing=crop"], "crop")):
        given = [f"ckpt_path={checkpoints['resize']}", "data=imagenet", f"data.root={photos}", f"data.num_classes={len(CLASSES)}", *extra]  # fmt: skip
        cfg = _tool_config("eval", given, tmp_path / "eval")
        data = evaluation_data(cfg, meta, given)
        assert data.eval_preprocessing == expected and data.image_size == SIZE
    module = ClassificationDataModule(photos, len(CLASSES), image_size=SIZE, eval_preprocessing="resize", num_workers=0)
    module.setup("validate")
    first, _ = module.val_set[0]
    raw = np.array(Image.open(module.val_set.samples[0][0]).convert("RGB"))
    whole = torch.from_numpy(A.Resize(SIZE, SIZE)(image=raw)["image"]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(first, whole, atol=1e-6, rtol=0)


def test_bad_preprocessing_settings_are_errors_that_say_what_is_allowed(checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"preprocessing mode is one of \('crop', 'resize'\), got 'squash'"):
        vision_mnv2.load(checkpoints["crop"], preprocessing={"mode": "squash"})
    for fraction in (1.5, 0):
        with pytest.raises(ValueError, match=rf"crop_fraction must be in \(0, 1\], got {float(fraction)}"):
            vision_mnv2.load(checkpoints["crop"], preprocessing={"crop_fraction": fraction})
    with pytest.raises(ValueError, match=r"preprocessing.flip is not a classification setting; settings: mode \(.*\), crop_fraction"):  # fmt: skip
        vision_mnv2.load(checkpoints["crop"], preprocessing={"flip": True})
    segmenter = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, aspp=False)
    path = save_model(tmp_path / "seg.ckpt", segmenter, describe("segmentation", segmenter, {}))
    with pytest.raises(ValueError, match=r"preprocessing.mode is not a segmentation setting; settings: none"):
        vision_mnv2.load(path, preprocessing={"mode": "resize"})
    # Unset (null) settings, as predict's config has them for every task, change nothing.
    assert vision_mnv2.load(path, preprocessing={"mode": None}).meta.preprocessing == read_checkpoint(path)[1].preprocessing  # fmt: skip
