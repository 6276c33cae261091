"""Prediction as users run it: photos of any size at the model's working size, outputs in the
photo's pixels, memory bounded, every file written whole, and nothing stale or lost."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import vision_mnv2
from tasks.cli import with_task_from_checkpoint
from tasks.inference import PREDICT_MANIFEST, predict
from vision_mnv2.checkpoint import save_model
from vision_mnv2.models import deeplabv3_mobilenet_v2, ssdlite_mobilenet_v2
from vision_mnv2.pipelines import describe
from vision_mnv2.pipelines import segmentation as segmentation_pipeline
from vision_mnv2.pipelines.segmentation import upsampled_labels

from .helpers import GOOGLE_DEEPLAB, GOOGLE_MODELS, REPO_ROOT, compose_config, needs_google, realistic_batch_norm


def _tool_config(name: str, overrides: list[str], output_dir):
    return compose_config(name, with_task_from_checkpoint(["tool", *overrides])[1:], output_dir)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A DeepLab evaluated (as DeepLab on VOC) on images padded to 96 px: its working size."""
    torch.manual_seed(0)
    model = realistic_batch_norm(deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, aspp=False))
    path = tmp_path_factory.mktemp("seg") / "seg.ckpt"
    return save_model(path, model, describe("segmentation", model, {"pad_to": 96}, class_names=["bg", "a", "b"]))


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs, closer to a photo than noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


@pytest.mark.parametrize("align_corners", [False, True])
def test_scores_mapped_back_in_strips_equal_one_bilinear_resize(monkeypatch, align_corners):
    logits = torch.randn(5, 13, 17)
    monkeypatch.setattr(segmentation_pipeline, "STRIP_VALUES", 5 * 61 * 7)  # 7 rows per strip: many strips
    for size in ((61, 83), (13, 17), (9, 40)):
        labels = upsampled_labels(logits, size, align_corners)
        expected = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=align_corners)[0]
        # Equal up to pixels whose two best classes tie within float error of the two computations.
        top2 = expected.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 1e-4
        assert labels.shape == size and clear.float().mean() > 0.99
        assert torch.equal(labels[clear], expected.argmax(0)[clear])


def test_segmentation_sees_every_photo_at_its_working_size(segmenter):
    pipeline = vision_mnv2.load(segmenter)
    assert pipeline.meta.preprocessing["resize_size"] == 96 and pipeline.meta.preprocessing["pad_to"] == [96, 96]
    for height, width in ((32, 24), (120, 160), (1000, 700)):
        tensor, context = pipeline.preprocess(_photo(height, width))
        # Longer side resized to 96 (up or down, as DeepLab's demo does), then padded to 96 x 96.
        assert tensor.shape == (3, 96, 96)
        assert max(context["valid"]) == 96 and context["size"] == (height, width)
        (prediction,) = pipeline.predict(_photo(height, width))
        assert prediction["mask"].shape == (height, width)


def test_segmentation_mask_is_the_working_size_scores_resized_to_the_photo(segmenter):
    """The pipeline's mask against the same thing computed another way: the network on the photo
    resized with PIL, its scores resized whole with F.interpolate."""
    pipeline = vision_mnv2.load(segmenter, fold_bn=False)
    photo = _photo(150, 200, seed=3)
    resized = np.asarray(Image.fromarray(photo).resize((96, 72), Image.BILINEAR))
    with torch.no_grad():
        scores = pipeline.model(torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float() / 255)
        expected = F.interpolate(scores, size=(150, 200), mode="bilinear")[0]
    (prediction,) = pipeline.predict(photo)
    top2 = expected.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-3  # the pipeline pads to 96 x 96, which moves scores a little
    agree = (prediction["mask"].long() == expected.argmax(0))[clear].float().mean()
    assert clear.float().mean() > 0.9 and agree > 0.99


def test_image_size_sets_the_working_size_and_says_so(segmenter, caplog):
    with caplog.at_level(logging.INFO):
        pipeline = vision_mnv2.load(segmenter, image_size=64)
    assert "running at 64 px instead of the 96 px it was trained at" in caplog.text
    assert pipeline.preprocess(_photo(100, 50))[0].shape == (3, 64, 64)


@needs_google
def test_googles_deeplab_segments_a_small_photo_as_it_segments_the_large_one(tmp_path):
    """The converted DeepLab on the bird photo shrunk to 128 px: resized to its 513 working size first
    (DeepLab's demo), it finds the bird as on the full photo; pasted small into the 513 canvas, it did not."""
    from vision_mnv2.convert.tflite_checkpoint import convert_tflite

    path, _ = convert_tflite(
        GOOGLE_DEEPLAB, tmp_path / "deeplab.ckpt", labels=GOOGLE_MODELS / "pascal_voc_segmentation_labels.txt"
    )
    pipeline = vision_mnv2.load(path)
    with Image.open(GOOGLE_MODELS / "bird_segmentation.bmp") as image:
        small = np.asarray(image.convert("RGB").resize((128, 128), Image.BILINEAR))
    with Image.open(GOOGLE_MODELS / "bird_segmentation_mask.bmp") as mask:
        truth = np.asarray(mask.resize((128, 128), Image.NEAREST))
    (prediction,) = pipeline.predict(small)
    bird, predicted = truth == 3, prediction["mask"].numpy() == 3
    iou = (bird & predicted).sum() / (bird | predicted).sum()
    assert iou > 0.85, iou


def _predict_peak_gb(segmenter, folder, out) -> float:
    """Peak resident memory of ``tools/predict.py`` on ``folder``, in its own process: the high-water
    mark of its own address space (VmHWM). Not getrusage's ru_maxrss, which a process started by
    fork or vfork and exec inherits from its parent (here the test process, GBs after a long
    session). glibc's allocator is told to hand large blocks back when freed (a fixed mmap
    threshold, one arena), so the peak is what was live at once rather than what it kept."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['tools/predict.py', 'ckpt_path={segmenter}', 'input={folder}', 'output_dir={out}']\n"
        "try:\n"
        "    runpy.run_path('tools/predict.py', run_name='__main__')\n"
        "finally:\n"
        "    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "    print('peak_kb', peak, flush=True)\n"
    )
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(re.search(r"peak_kb (\d+)", done.stdout)[1]) / 2**20


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_a_huge_photo_is_predicted_in_bounded_memory(segmenter, tmp_path):
    """A 6000 x 6000 photo: the network runs at the working size and the mask is mapped back in
    strips, so the process grows by a few copies of the photo, far below what the network at full
    size needs (its first feature map alone is 16 x 3000 x 3000 floats, 576 MB; the whole, many GB)."""
    small, huge = tmp_path / "small", tmp_path / "huge"
    small.mkdir(), huge.mkdir()
    Image.fromarray(_photo(64, 64)).save(small / "small.jpg", quality=80)
    Image.fromarray(_photo(6000, 6000)).save(huge / "huge.jpg", quality=80)
    baseline = _predict_peak_gb(segmenter, small, tmp_path / "out_small")  # interpreter, torch, the model
    peak = _predict_peak_gb(segmenter, huge, tmp_path / "out")
    # The photo is 108 MB as RGB; its decoding, mask (36 MB), overlay and their PNG encoding came to
    # 0.74 GB. 1.5 GB leaves room for another machine's libraries and stays far below the network
    # at full size (its expanded feature maps alone: several GB).
    assert peak - baseline < 1.5, (baseline, peak)
    with Image.open(tmp_path / "out" / "00001_huge_mask.png") as mask:
        assert mask.size == (6000, 6000)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares a huge size (and holds no pixels): what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_photos_too_large_or_failing_are_skipped_by_name_and_the_rest_written(segmenter, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg", "d.jpg"):
        Image.fromarray(_photo(40, 60)).save(folder / name)
    _png_header_only(folder / "b.png", 30000, 30000)
    overrides = [f"ckpt_path={segmenter}", f"input={folder}", f"output_dir={tmp_path / 'out'}"]
    cfg = _tool_config("predict", overrides, tmp_path / "run")
    original = vision_mnv2.pipelines.SegmentationPipeline.predict
    calls = []

    def out_of_memory_on_c(self, images, batch_size=8):  # a.jpg, then c.jpg (b.png fails to open)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory")
        return original(self, images, batch_size)

    monkeypatch.setattr(vision_mnv2.pipelines.SegmentationPipeline, "predict", out_of_memory_on_c)
    results = json.loads(predict(cfg).read_text())
    assert [r["file"].rsplit("/", 1)[-1] for r in results] == ["a.jpg", "d.jpg"]
    skipped = {
        s["file"].rsplit("/", 1)[-1]: s["problem"] for s in json.loads((tmp_path / "out/skipped.json").read_text())
    }
    assert set(skipped) == {"b.png", "c.jpg"}
    assert "exceeds limit" in skipped["b.png"] or "decompression bomb" in skipped["b.png"].lower()
    assert "not enough memory" in skipped["c.jpg"]


def test_a_run_stopped_half_way_keeps_what_it_predicted(segmenter, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(_photo(40, 60)).save(folder / name)
    original = vision_mnv2.pipelines.SegmentationPipeline.predict
    calls = []

    def interrupted(self, images, batch_size=8):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images, batch_size)

    monkeypatch.setattr(vision_mnv2.pipelines.SegmentationPipeline, "predict", interrupted)
    cfg = _tool_config(
        "predict", [f"ckpt_path={segmenter}", f"input={folder}", f"output_dir={tmp_path / 'out'}"], tmp_path / "r"
    )
    with pytest.raises(KeyboardInterrupt):
        predict(cfg)
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["file"].rsplit("/", 1)[-1] for r in results] == ["a.jpg"]


def test_a_rerun_into_the_same_folder_replaces_what_the_earlier_one_wrote(segmenter, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, names in ((first, ("a.jpg", "b.jpg", "broken.jpg")), (second, ("z.jpg",))):
        folder.mkdir()
        for name in names:
            Image.fromarray(_photo(40, 60)).save(folder / name)
    (first / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    for source in (first, second):
        predict(
            _tool_config("predict", [f"ckpt_path={segmenter}", f"input={source}", f"output_dir={out}"], tmp_path / "r")
        )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [PREDICT_MANIFEST, "notes.txt", "predictions.json", "images.json", "00001_z_mask.png", "00001_z_overlay.jpg"]
    )
    assert not any(p.name.startswith(".") and p.name != PREDICT_MANIFEST for p in out.iterdir()), "no temporaries"
    # A folder with predictions that do not list their files is refused rather than mixed.
    (out / PREDICT_MANIFEST).unlink()
    with pytest.raises(FileExistsError, match="holds predictions that do not list their files"):
        predict(
            _tool_config("predict", [f"ckpt_path={segmenter}", f"input={second}", f"output_dir={out}"], tmp_path / "r")
        )


def test_detection_log_counts_what_is_drawn(tmp_path, caplog):
    torch.manual_seed(0)
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=96))
    ckpt = save_model(tmp_path / "det.ckpt", model, describe("detection", model, {}))
    Image.fromarray(_photo(80, 100)).save(tmp_path / "p.jpg")
    overrides = [
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'p.jpg'}",
        f"output_dir={tmp_path / 'out'}",
        "draw_score_thresh=0.05",
    ]
    with caplog.at_level(logging.INFO):
        results = json.loads(predict(_tool_config("predict", overrides, tmp_path / "run")).read_text())
    drawn = sum(r["score"] >= 0.05 for r in results)
    assert f"p.jpg: {drawn} detection(s) >= 0.05" in caplog.text
