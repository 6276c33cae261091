"""tools/benchmark.py: our network against torchvision's, measured in one run, from a checkpoint
alone; the report stays in the run folder unless the docs are to be updated."""

from __future__ import annotations

import json
import re
import time

import torch
from omegaconf import OmegaConf

from tasks.cli import with_task_from_checkpoint
from tools.benchmarks.against_torchvision import run_benchmark
from vision_mnv2.benchmark import time_call
from vision_mnv2.checkpoint import save_model
from vision_mnv2.models import ssdlite_mobilenet_v2
from vision_mnv2.pipelines import describe

from .helpers import compose_config

QUICK = [
    "benchmark.batch=2",
    "benchmark.warmup=0",
    "benchmark.iters=1",
    "benchmark.repeats=1",
    "benchmark.train_steps=0",
]


def test_benchmark_of_a_checkpoint_against_torchvision(tmp_path):
    model = ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=96).eval()
    ckpt = save_model(tmp_path / "det.ckpt", model, describe("detection", model, {}))
    docs = tmp_path / "BENCHMARKS.md"
    overrides = with_task_from_checkpoint(["tool", f"ckpt_path={ckpt}", *QUICK, f"benchmark.docs={docs}"])[1:]
    docs.write_text("# Benchmarks\n\n<!-- benchmark:benchmark -->\nold numbers\n<!-- /benchmark:benchmark -->\n")
    text = run_benchmark(compose_config("benchmark", overrides, tmp_path / "run"))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    ours, theirs, ratio = rows[1], rows[2], rows[3]
    assert "det.ckpt" in ours and "torchvision ssdlite320_mobilenet_v3_large" in theirs
    assert "at 96x96" in text, "both measured at the checkpoint's input size"
    params = sum(p.numel() for p in model.parameters())
    assert f"{params / 1e6:.2f}M" in ours
    assert float(ratio.split("|")[2]) == round(params / 3_440_060, 2)
    assert (tmp_path / "run" / "benchmark.md").read_text() == text
    assert "old numbers" in docs.read_text(), "the project's recorded numbers change only when asked"


def test_time_call_measures_seconds_per_call():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01)

    seconds = time_call(work, warmup=1, iters=5)
    assert 0.009 < seconds < 0.05 and len(calls) >= 6


def test_finetune_classification_benchmark_runs_as_documented(tmp_path, tiny_cls_root):
    """The fine-tuning benchmark's recipes train the given steps of the preset's batch from one
    checkpoint and are scored on the same photos, on a folder in the ImageNet layout (one seed here;
    the segmentation benchmark's test covers several)."""
    from tools.benchmarks.finetune_classification import main
    from vision_mnv2.models import mobilenet_v2

    init = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "init.ckpt", init, describe("classification", init, {"image_size": 224}))
    out = tmp_path / "out"
    argv = ["--init", str(ckpt), "--folder", str(tiny_cls_root), "--steps", "2", "--output", str(out)]
    assert main([*argv, "--from-scratch"]) == 0
    text = (out / "finetune_classification.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [name.strip() for name, _, _ in rows] == [
        "torchvision transfer-learning tutorial",
        "experiment=finetune_classification_custom",
        "task=classification (the synthetic-data recipe)",
    ]
    assert all(0.0 <= float(top1) <= 1.0 and float(seconds) >= 0 for _, top1, seconds in rows)
    batch = compose_config("train", ["experiment=finetune_classification_custom", "data.root=x"], tmp_path / "c")
    assert f"2 steps of {batch.data.batch_size}" in text and "Preset / reference top-1 (means)" in text
    for run in ("preset_seed0", "task"):
        written = json.loads((out / run / "train_metrics.json").read_text())
        assert written["steps"] == written["step_budget"] == 2, "every recipe trains the same steps"
        assert written["images"] == 2 * batch.data.batch_size, "and sees as many images"


def test_finetune_segmentation_benchmark_runs_as_documented(tmp_path, seg_root):
    """The segmentation fine-tuning benchmark trains torchvision's reference recipe and the preset
    the same steps of the preset's batch from one checkpoint, per seed, and scores both with the
    same pipeline on the same photos."""
    from tools.benchmarks.finetune_segmentation import ReferenceDeepLab, main
    from vision_mnv2.models import mobilenet_v2

    init = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "init.ckpt", init, describe("classification", init, {"image_size": 224}))
    out = tmp_path / "out"
    argv = ["--init", str(ckpt), "--root", str(seg_root), "--steps", "2", "--crop", "64", "--seeds", "2"]
    assert main([*argv, "--preset-override", "module.backbone_lr_mult=0.5", "--output", str(out)]) == 0
    text = (out / "finetune_segmentation.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [name.strip() for name, _, _ in rows] == [
        "torchvision segmentation reference (DeepLabHead)",
        "experiment=finetune_deeplabv3_custom module.backbone_lr_mult=0.5",  # a variant, as measured
    ]
    for _, miou, seconds in rows:
        mean, spread = re.fullmatch(r"\s*([\d.]+) ± ([\d.]+) \([\d.]+-[\d.]+\)\s*", miou).groups()
        assert 0.0 <= float(mean) <= 1.0 and float(spread) >= 0 and float(seconds) >= 0
    batch = compose_config("train", ["experiment=finetune_deeplabv3_custom", "data.root=x"], tmp_path / "c")
    assert f"2 steps of {batch.data.batch_size} crops of 64" in text and "Preset / reference mIoU (means)" in text
    for run in ("preset_seed0", "preset_seed1"):
        written = json.loads((out / run / "train_metrics.json").read_text())
        assert written["steps"] == 2 and written["images"] == 2 * batch.data.batch_size
        recorded = OmegaConf.load(out / run / ".hydra" / "config.yaml")
        assert recorded.module.backbone_lr_mult == 0.5 and recorded.data.image_size == 64
    # The reference is torchvision's head on the checkpoint's backbone (its width), not this project's.
    reference = ReferenceDeepLab(3, {"width_mult": 0.35})
    assert type(reference.head).__name__ == "DeepLabHead" and reference.eval()(torch.rand(1, 3, 64, 80)).shape == (
        1,
        3,
        64,
        80,
    )
