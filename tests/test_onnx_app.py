"""A detection ONNX file used by another app: its metadata says how to read the outputs, its output
dimensions are named, a deployment score threshold is chosen at export, and the README's example
in plain onnxruntime + NumPy + PIL finds the boxes the project's own pipeline finds."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import vision_mnv2
from tasks.cli import with_task_from_checkpoint
from tasks.inference import export
from vision_mnv2.checkpoint import save_model
from vision_mnv2.models import ssdlite_mobilenet_v2
from vision_mnv2.pipelines import describe

from .helpers import compose_config, realistic_batch_norm
from .readme_world import readme_snippets

CLASS_NAMES = ["cat", "dog", "bird"]
CATEGORY_IDS = [3, 7, 11]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    torch.manual_seed(0)
    model = realistic_batch_norm(ssdlite_mobilenet_v2(num_classes=3, width_mult=0.35, image_size=96))
    meta = describe("detection", model, {}, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)
    return save_model(tmp_path_factory.mktemp("det") / "det.ckpt", model, meta)


def _export(ckpt, target, *overrides):
    cfg = compose_config(
        "export", with_task_from_checkpoint(["tool", f"ckpt_path={ckpt}", f"export.file={target}", *overrides])[1:],
        target.parent / "run",
    )  # fmt: skip
    return export(cfg)


def test_the_file_says_how_to_read_its_outputs(detector, tmp_path):
    path = _export(detector, tmp_path / "detector.onnx")
    graph = onnx.load(str(path))
    props = {p.key: p.value for p in graph.metadata_props}
    guide = json.loads(props["detections"])
    assert guide["score_thresh"] == 0.3, "the deployment threshold tools/export.py states"
    assert "x0, y0, x1, y1" in guide["boxes"] and "96 x 96 network input" in guide["boxes"]
    assert json.loads(props["category_ids"]) == CATEGORY_IDS and json.loads(props["class_names"]) == CLASS_NAMES
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    assert dims == {
        "boxes": ["batch", "max_detections", 4],
        "scores": ["batch", "max_detections"],
        "category_ids": ["batch", "max_detections"],
        "num_detections": ["batch"],
    }
    # Deployment keeps fewer, surer detections; an export for evaluation keeps the detector's 0.001.
    photo = np.asarray(Image.new("RGB", (120, 90), (120, 100, 80)))
    (deployed,) = vision_mnv2.load(path)(photo)
    evaluation = _export(detector, tmp_path / "for_eval.onnx", "export.score_thresh=null")
    assert json.loads({p.key: p.value for p in onnx.load(str(evaluation)).metadata_props}["detections"])["score_thresh"] == 0.001  # fmt: skip
    (everything,) = vision_mnv2.load(evaluation)(photo)
    assert (deployed["scores"] >= 0.3).all() and len(everything["scores"]) == 100 > len(deployed["scores"])
    kept = everything["scores"] >= 0.3
    torch.testing.assert_close(deployed["boxes"], everything["boxes"][kept], atol=1e-3, rtol=1e-4)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def test_the_readmes_onnxruntime_example_finds_the_pipelines_boxes(detector, tmp_path):
    [example] = [s.code for s in readme_snippets() if "import onnxruntime" in s.code]
    assert "vision_mnv2" not in example, "the example needs nothing of this project"
    _export(detector, tmp_path / "detector.onnx", "export.score_thresh=0.2")
    # A photo smaller than the network input: PIL's bilinear upscaling is the pipeline's
    # interpolation (both sample pixel centres), up to PIL's rounding to whole pixel values.
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((80, 60), Image.BICUBIC)
    small.save(tmp_path / "photo.jpg", quality=95)
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = []
    for line in done.stdout.splitlines():
        name, score, coords = re.match(r"(\w+) ([\d.]+) \[(.*)\]", line).groups()
        printed.append((name, float(score), np.array([float(v) for v in coords.split()])))
    (ours,) = vision_mnv2.load(tmp_path / "detector.onnx")(np.asarray(Image.open(tmp_path / "photo.jpg")))
    assert printed and abs(len(printed) - len(ours["scores"])) <= 1
    names = [CLASS_NAMES[int(label) - 1] for label in ours["labels"]]
    matched = 0
    for name, _, box in printed:
        assert box[0] >= -0.5 and box[2] <= 80.5 and box[3] <= 60.5, "boxes in the photo's pixels"
        best = max((_iou(box, b.numpy()) for n, b in zip(names, ours["boxes"]) if n == name), default=0.0)
        matched += best > 0.9
    assert matched >= 0.9 * len(printed), f"{matched} of {len(printed)} boxes found by the pipeline"


def test_a_damaged_onnx_file_is_named(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ValueError, match=r"model\.onnx: not a readable ONNX file"):
        vision_mnv2.load(bad)
