"""tools/benchmark.py: our network against torchvision's, measured in one run, from a checkpoint
alone; the report stays in the run folder unless the docs are to be updated."""

from __future__ import annotations

import time

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
