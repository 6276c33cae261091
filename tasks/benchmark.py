"""``tools/benchmark.py``: this project's network against torchvision's counterpart, and the task's
full training loop against its model step alone, all measured in one run; results go to
docs/BENCHMARKS.md between markers for the task, with the command that produced them."""

from __future__ import annotations

import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vision_mnv2.benchmark import measure, reference_model

from .inference import task_kind

__all__ = ["run_benchmark", "training_throughput"]

# Class counts of the reference models, so both sides predict the same number of outputs.
REFERENCE_CLASSES = {"classification": 1000, "detection": 90, "segmentation": 21}


def _model_for(cfg: DictConfig, kind: str, image_size: int):
    kwargs = {"num_classes": REFERENCE_CLASSES[kind]}
    if kind == "detection":
        kwargs["image_size"] = image_size
    for key in ("weights", "backbone_weights", "init_from"):
        if key in cfg.model:
            kwargs[key] = None
    return instantiate(cfg.model, **kwargs)


def training_throughput(cfg: DictConfig, steps: int) -> dict[str, float]:
    """Images per second of the task's training loop on its configured data (loading, augmentation,
    forward, backward, optimiser step) and of the model step alone on one batch held in memory: when
    the first is much lower, data loading is the bottleneck."""
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
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


def _best(rows):
    """Each figure at its best over the repeats: the least disturbed measurement of each."""

    def pick(field, best):
        values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
        return best(values) if values else None

    first = rows[0]
    return type(first)(
        first.name, first.params, first.macs,
        pick("eager_latency_ms", min), pick("eager_throughput", max),
        pick("onnx_latency_ms", min), pick("onnx_throughput", max), pick("peak_memory_mb", min),
    )  # fmt: skip


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(ours, theirs):
    return "-" if ours is None or theirs is None or theirs == 0 else f"{ours / theirs:.2f}"


def run_benchmark(cfg: DictConfig) -> str:
    kind = task_kind(cfg)
    torch.set_num_threads(int(cfg.benchmark.threads or torch.get_num_threads()))
    ref_name, ref_model, ref_size = reference_model(kind)
    size = int(cfg.benchmark.image_size or ref_size)
    ours = _model_for(cfg, kind, size)
    args = dict(
        batch=int(cfg.benchmark.batch),
        warmup=int(cfg.benchmark.warmup),
        iters=int(cfg.benchmark.iters),
        onnx=bool(cfg.benchmark.onnx),
    )
    rows = []
    # Alternate the two models so that drifting machine load hits both alike.
    for _ in range(int(cfg.benchmark.repeats)):
        rows.append(measure(f"vision-mnv2 {cfg.task_name}", ours, kind, size, **args))
        rows.append(measure(ref_name, ref_model, kind, size, **args))
    ours_m, ref_m = _best(rows[0::2]), _best(rows[1::2])

    lines = [
        f"### {cfg.task_name} ({kind}) at {size}x{size}, {torch.get_num_threads()} threads",
        "",
        f"Command: `python tools/benchmark.py {' '.join(shlex.quote(a) for a in sys.argv[1:] if not a.startswith('hydra.'))}`  ",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
        f"Each figure the best of {cfg.benchmark.repeats} alternating repeats (latency: median of {cfg.benchmark.iters} calls); "
        "no NMS in either detector. Ratios: latency and memory below 1, throughput above 1 mean ours is better.",
        "",
        f"| model | params | MACs | eager ms (batch 1) | eager img/s (batch {cfg.benchmark.batch}) | ONNX Runtime ms (batch 1) "
        f"| ONNX Runtime img/s (batch {cfg.benchmark.batch}) | peak memory added, MB (batch 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in (ours_m, ref_m):
        lines.append(
            f"| {m.name} | {m.params / 1e6:.2f}M | {m.macs / 1e9:.3f}B | {_fmt(m.eager_latency_ms)} | {_fmt(m.eager_throughput)} "
            f"| {_fmt(m.onnx_latency_ms)} | {_fmt(m.onnx_throughput)} | {_fmt(m.peak_memory_mb)} |"
        )
    lines.append(
        f"| **ratio ours / torchvision** | {ours_m.params / ref_m.params:.2f} | {ours_m.macs / ref_m.macs:.2f} "
        f"| {_ratio(ours_m.eager_latency_ms, ref_m.eager_latency_ms)} | {_ratio(ours_m.eager_throughput, ref_m.eager_throughput)} "
        f"| {_ratio(ours_m.onnx_latency_ms, ref_m.onnx_latency_ms)} | {_ratio(ours_m.onnx_throughput, ref_m.onnx_throughput)} "
        f"| {_ratio(ours_m.peak_memory_mb, ref_m.peak_memory_mb)} |"
    )
    if cfg.benchmark.train_steps:
        train = training_throughput(cfg, int(cfg.benchmark.train_steps))
        lines += [
            "",
            f"Training on the task's configured data (`{cfg.data._target_.rsplit('.', 1)[-1]}`, batch {train['batch_size']}, "
            f"{cfg.data.get('num_workers', 0)} loader workers, {cfg.benchmark.train_steps} steps): full loop "
            f"{train['full_loop']:.1f} img/s, model step alone {train['model_step']:.1f} img/s, "
            f"ratio {train['full_loop'] / train['model_step']:.2f} (1.0 = data loading costs nothing).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if cfg.benchmark.write:
        _write_section(Path(cfg.benchmark.output), cfg.task_name, text)
    return text


def _write_section(path: Path, name: str, text: str) -> None:
    start, end = f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"
    current = (
        path.read_text()
        if path.is_file()
        else "# Benchmarks\n\nWritten by `tools/benchmark.py`; each section is replaced when its command runs again.\n"
    )
    block = f"{start}\n{text}{end}"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        _, after = rest.split(end, 1)
        current = before + block + after
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(current)
    tmp.replace(path)
