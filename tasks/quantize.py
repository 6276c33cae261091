"""``tools/quantize.py``: export a checkpoint to ONNX, quantise it to int8 (static, calibrated on
training images) and measure, in the same run, accuracy on the validation split and batch-1 latency
of the fp32 and int8 graphs in onnxruntime. The report goes to the run folder;
``quantize.update_docs=true`` also replaces the task's section of docs/BENCHMARKS.md."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vision_mnv2.benchmark import time_call
from vision_mnv2.pipelines import OnnxRunner
from vision_mnv2.quantize import quantize_static_onnx
from vision_mnv2.reports import command_line, publish, report_header

from .checkpoint_config import evaluation_data, open_pipeline

__all__ = ["run_quantize"]


class _Counted:
    """An iterable that counts the items taken from it."""

    def __init__(self, items: Iterable) -> None:
        self.items = items
        self.count = 0

    def __iter__(self) -> Iterator:
        for item in self.items:
            self.count += 1
            yield item


def run_quantize(cfg: DictConfig, overrides: list[str] | None = None) -> str:
    pipeline = open_pipeline(cfg, overrides)
    datamodule = instantiate(evaluation_data(cfg, pipeline.meta, overrides))
    datamodule.prepare_data()
    datamodule.setup("fit")
    out_dir = Path(cfg.paths.output_dir)
    name = pipeline.meta.builder
    fp32 = pipeline.export_onnx(out_dir / f"{name}_fp32.onnx")
    count = int(cfg.quantize.calibration_images)
    calibration = _Counted(pipeline.calibration_batches(datamodule.train_set, count))
    int8 = quantize_static_onnx(fp32, out_dir / f"{name}_int8.onnx", calibration, method=cfg.quantize.method)
    # What the calibration saw: a training split smaller than calibration_images gives all it has.
    used = f"{calibration.count} training images"
    if calibration.count < count:
        used += f" (the whole training split; quantize.calibration_images={count})"
    threads = int(cfg.quantize.threads or torch.get_num_threads())
    graphs = {
        kind: type(pipeline)(pipeline.meta, runner=OnnxRunner(path, threads), **pipeline.export_options)
        for kind, path in (("fp32", fp32), ("int8", int8))
    }
    metric = pipeline.headline_metric
    scores = {kind: graph.evaluate(datamodule.val_set)[metric] for kind, graph in graphs.items()}
    sample, _ = pipeline.preprocess(next(iter(pipeline.raw_images(datamodule.val_set))))
    feed = {"images": pipeline.collate([sample]).numpy()}
    latency = {kind: float("inf") for kind in graphs}
    for _ in range(int(cfg.quantize.repeats)):  # alternate, keep each one's best median
        for kind, graph in graphs.items():
            session = graph.runner.session
            seconds = time_call(lambda s=session: s.run(None, feed), 3, int(cfg.quantize.iters))
            latency[kind] = min(latency[kind], seconds * 1000)
    sizes = {kind: path.stat().st_size / 2**20 for kind, path in (("fp32", fp32), ("int8", int8))}
    lines = report_header(
        f"int8 static quantisation, {cfg.task_name} ({pipeline.task}), onnxruntime CPU, {threads} threads",
        command_line("tools/quantize.py"),
        f"Calibration: {used}, "
        f"{cfg.quantize.method}; QDQ, int8 weights per channel, uint8 activations. Input {tuple(feed['images'].shape)}. "
        f"Accuracy on the {len(datamodule.val_set)} validation images through the exported graphs"
        + (f" ({pipeline.quantization_note})." if pipeline.quantization_note else "."),
        packages=("onnxruntime",),
    )
    lines += [
        f"| graph | {metric} | file, MB | latency, ms (batch 1) |",
        "|---|---|---|---|",
    ]
    for kind in graphs:
        lines.append(f"| {kind} | {scores[kind]:.4f} | {sizes[kind]:.1f} | {latency[kind]:.2f} |")
    lines.append(
        f"| **int8 vs fp32** | **{scores['int8'] - scores['fp32']:+.4f}** | {sizes['int8'] / sizes['fp32']:.2f}x "
        f"| **{latency['int8'] / latency['fp32']:.2f}x** |"
    )
    return publish(
        "\n".join(lines) + "\n",
        f"quantization_{cfg.task_name}",
        update_docs=cfg.quantize.update_docs,
        docs=cfg.quantize.docs,
        report_file=out_dir / "quantize.md",
    )
