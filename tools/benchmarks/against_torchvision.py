"""This project's network (random weights, or a checkpoint's) against
torchvision's counterpart, and the task's full training loop against its model step alone, all
measured in one run. The body of the user's command ``python tools/benchmark.py`` (a Hydra tool:
configs/benchmark.yaml); the report goes to the run folder, and ``benchmark.update_docs=true`` also
replaces the task's section of docs/BENCHMARKS.md."""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from tasks.checkpoint_config import (
    checkpoint_model,
    evaluation_data,
    open_pipeline,
    task_of_config,
    without_weights,
)
from vision_mnv2.benchmark import Measurement, measure
from vision_mnv2.complexity import count_parameters
from vision_mnv2.pipelines import PIPELINES, Pipeline, describe
from vision_mnv2.reports import command_line, publish, report_header

__all__ = ["run_benchmark", "training_throughput"]


def _random_pipeline(cfg: DictConfig, task: str, image_size: int, classes: int) -> Pipeline:
    """The configured network with random weights, with torchvision's class count and input size."""
    kwargs = {"num_classes": classes}
    if PIPELINES[task].builder_takes_image_size:
        kwargs["image_size"] = image_size
    model = instantiate(without_weights(copy.deepcopy(cfg)).model, **kwargs).eval()
    return PIPELINES[task](describe(task, model, {"image_size": image_size}), model)


def training_throughput(cfg: DictConfig, steps: int) -> dict[str, float]:
    """Images per second of the task's training loop on its configured data (loading, augmentation,
    forward, backward, optimiser step) and of the model step alone on one batch held in memory: when
    the first is much lower, data loading is the bottleneck."""
    datamodule = instantiate(cfg.data)
    if cfg.get("ckpt_path"):
        model, _ = checkpoint_model(cfg)
        module = instantiate(cfg.module, model=model.train(), init_from=None, optimizer=None, scheduler=None)
    else:
        # The step below brings its own optimiser: benchmark.yaml composes none.
        module = instantiate(cfg.module, optimizer=None, scheduler=None)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.setup("fit")
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    # training_step logs through Lightning; outside a Trainer that is a no-op.
    module.log = lambda *args, **kwargs: None
    module.log_dict = lambda *args, **kwargs: None

    def step(batch, index):
        loss = module.training_step(batch, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    loader = iter(datamodule.train_dataloader())
    first = next(loader)
    batch_size = len(first[0])
    step(first, 0)  # warm-up
    start = time.perf_counter()
    done = 0
    for index in range(steps):
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(datamodule.train_dataloader())
            batch = next(loader)
        step(batch, index)
        done += len(batch[0])
    full = done / (time.perf_counter() - start)
    start = time.perf_counter()
    for index in range(steps):
        step(first, index)
    alone = steps * batch_size / (time.perf_counter() - start)
    return {"full_loop": full, "model_step": alone, "batch_size": batch_size}


def _best_of_repeats(rows: list[Measurement]) -> Measurement:
    """Each figure at its best over the repeats: the least disturbed measurement of each."""

    def pick(field, best):
        values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
        return best(values) if values else None

    first = rows[0]
    return Measurement(
        first.name, first.params, first.macs,
        pick("eager_latency_ms", min), pick("eager_throughput", max),
        pick("onnx_latency_ms", min), pick("onnx_throughput", max), pick("peak_memory_mb", min),
    )  # fmt: skip


def _format_figure(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(ours, theirs):
    return "-" if ours is None or theirs is None or theirs == 0 else f"{ours / theirs:.2f}"


def run_benchmark(cfg: DictConfig) -> str:
    task = task_of_config(cfg)
    torch.set_num_threads(int(cfg.benchmark.threads or torch.get_num_threads()))
    pipeline_class = PIPELINES[task]
    if cfg.get("ckpt_path"):
        with open_dict(cfg):
            if cfg.benchmark.image_size:
                cfg.image_size = int(cfg.benchmark.image_size)
        ours = open_pipeline(cfg)
        size = cfg.benchmark.image_size or (ours.meta.input_size or [None])[0]
        label = f"vision-mnv2 {ours.meta.builder} ({Path(cfg.ckpt_path).name})"
    else:
        size = cfg.benchmark.image_size or pipeline_class.reference_size
        ours = _random_pipeline(cfg, task, int(size), pipeline_class.reference_classes)
        label = f"vision-mnv2 {ours.meta.builder}"
    ref_name, ref_function, ref_params, size = pipeline_class.reference(int(size) if size else None)
    ours_function = ours.export_module(**pipeline_class.benchmark_options)
    ours_params = count_parameters(ours.model)
    args = dict(
        batch=int(cfg.benchmark.batch), warmup=int(cfg.benchmark.warmup), iters=int(cfg.benchmark.iters),
        onnx=bool(cfg.benchmark.onnx),
    )  # fmt: skip
    rows = []
    # Alternate the two models so that drifting machine load hits both alike.
    for _ in range(int(cfg.benchmark.repeats)):
        rows.append(measure(label, ours_function, ours_params, size, **args))
        rows.append(measure(ref_name, ref_function, ref_params, size, **args))
    ours_m, ref_m = _best_of_repeats(rows[0::2]), _best_of_repeats(rows[1::2])

    lines = report_header(
        f"{cfg.task_name} ({task}) at {size}x{size}, {torch.get_num_threads()} threads",
        command_line("tools/benchmark.py"),
        f"Each figure the best of {cfg.benchmark.repeats} alternating repeats (latency: median of {cfg.benchmark.iters} calls); "
        "no NMS in either detector. Ratios: latency and memory below 1, throughput above 1 mean ours is better.",
        platform.processor() or "cpu",
        packages=("torch", "onnxruntime"),
    )
    lines += [
        f"| model | params | MACs | eager ms (batch 1) | eager img/s (batch {cfg.benchmark.batch}) | ONNX Runtime ms (batch 1) "
        f"| ONNX Runtime img/s (batch {cfg.benchmark.batch}) | peak memory added, MB (batch 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in (ours_m, ref_m):
        lines.append(
            f"| {m.name} | {m.params / 1e6:.2f}M | {m.macs / 1e9:.3f}B | {_format_figure(m.eager_latency_ms)} | {_format_figure(m.eager_throughput)} "
            f"| {_format_figure(m.onnx_latency_ms)} | {_format_figure(m.onnx_throughput)} | {_format_figure(m.peak_memory_mb)} |"
        )
    lines.append(
        f"| **ratio ours / torchvision** | {ours_m.params / ref_m.params:.2f} | {ours_m.macs / ref_m.macs:.2f} "
        f"| {_ratio(ours_m.eager_latency_ms, ref_m.eager_latency_ms)} | {_ratio(ours_m.eager_throughput, ref_m.eager_throughput)} "
        f"| {_ratio(ours_m.onnx_latency_ms, ref_m.onnx_latency_ms)} | {_ratio(ours_m.onnx_throughput, ref_m.onnx_throughput)} "
        f"| {_ratio(ours_m.peak_memory_mb, ref_m.peak_memory_mb)} |"
    )
    if cfg.benchmark.train_steps:
        if cfg.get("ckpt_path"):
            with open_dict(cfg):
                cfg.data = evaluation_data(cfg, ours.meta, any_data=True)  # timing: any data of the task
        train = training_throughput(cfg, int(cfg.benchmark.train_steps))
        lines += [
            "",
            f"Training on the task's configured data (`{cfg.data._target_.rsplit('.', 1)[-1]}`, batch {train['batch_size']}, "
            f"{cfg.data.get('num_workers', 0)} loader workers, {cfg.benchmark.train_steps} steps): full loop "
            f"{train['full_loop']:.1f} img/s, model step alone {train['model_step']:.1f} img/s, "
            f"ratio {train['full_loop'] / train['model_step']:.2f} (1.0 = data loading costs nothing).",
        ]
    return publish(
        "\n".join(lines) + "\n",
        cfg.task_name,
        update_docs=cfg.benchmark.update_docs,
        docs=cfg.benchmark.docs,
        report_file=Path(cfg.paths.output_dir) / "benchmark.md",
    )


if __name__ == "__main__":
    raise SystemExit("this measurement runs as the Hydra tool `python tools/benchmark.py` (see its --help)")
