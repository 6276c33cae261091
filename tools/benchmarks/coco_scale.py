"""COCO-sized detection data on one machine, measured side by side in one run:

    python tools/benchmarks/coco_scale.py [--train-images 118287] [--boxes 860001] [--samples 2000] [--update-docs]

A COCO-layout set of COCO 2017's size is generated into the cache (once; reused when present):
118,287 training and 5,000 validation images, ~860k boxes with COCO's 80 category ids, 1% crowd,
~1% images without boxes, and a 24-point polygon per box so that the JSON is about as large as
``instances_train2017.json``. Image files are hard links to six 640x480-class JPEGs (COCO's common
sizes): every file name exists and decodes at a real photo's cost, at no disk cost.

Measured, each in a fresh forked process:

- set-up of ``data=coco`` as the tools compose it (``DetectionDataModule.setup``:
  JSON validation, image checks, targets; train and val) against pycocotools' ``COCO(json)`` load of
  the same two files (the reference);
- memory: what the training dataset holds in the main process, and the private memory (USS, PSS
  from ``/proc/<pid>/smaps_rollup``) of each of 2 loader workers after ``--samples`` training
  samples each, against the same on a 5,000-image set (the validation split as training data):
  flat per-worker memory means a ratio near 1;
- training-loader throughput with 2 workers (320, the recipe's augmentation) against the SSDLite
  320 training step (forward, backward, SGD step) per sample.

Page cache warm (the files are read before timing). Writes docs/BENCHMARKS.md with --update-docs."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from tasks.cli import compose_config, run_tool
from vision_mnv2.reports import argument_parser

# ----------------------------------------------------------------------------------------------
# Measurements, each in a fresh forked process so that one leaves nothing behind for the next.


def _in_child(function, *args):
    """``function(*args)`` in a forked process; returns its (picklable) result."""
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe(duplex=False)

    def run():
        try:
            child_end.send(("ok", function(*args)))
        except BaseException as error:  # reported in the parent
            child_end.send(("error", repr(error)))

    process = context.Process(target=run)
    process.start()
    child_end.close()  # so that a child killed (out of memory) ends the wait with EOFError
    try:
        status, value = parent_end.recv()
    except EOFError:
        status, value = "error", f"the process ended without a result (exit code {process.join() or process.exitcode})"
    process.join()
    if status != "ok":
        raise RuntimeError(f"{function.__name__} failed: {value}")
    return value


def _memory_kb(pid: int | str = "self") -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of a process, kB, from smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def _cpu_seconds(pids) -> float:
    """User + system CPU time of processes (fields 14, 15 of /proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _data_config(root: Path) -> dict:
    """The settings of ``data=coco`` as the tools compose them for the detection task, on ``root``,
    with 2 loader workers: ``DetectionDataModule``'s arguments."""
    from omegaconf import OmegaConf

    overrides = ["task=ssdlite", "data=coco", f"data.root={root}", "data.num_workers=2", "data.pin_memory=false"]
    config = OmegaConf.to_container(compose_config("train", overrides).data, resolve=True)
    config.pop("_target_")
    return config


def _pycocotools_load(root: Path) -> dict:
    import contextlib
    import io

    from pycocotools.coco import COCO

    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        train = COCO(str(root / "annotations" / "instances_train2017.json"))
        COCO(str(root / "annotations" / "instances_val2017.json"))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "images": len(train.imgs), "boxes": len(train.anns)}


def _datamodule_setup(root: Path) -> dict:
    from tasks.datamodules import DetectionDataModule

    gc.collect()
    before = _memory_kb()["rss"]
    start, cpu = time.perf_counter(), time.process_time()
    datamodule = DetectionDataModule(**_data_config(root))
    datamodule.setup("fit")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    gc.collect()
    held = _memory_kb()["rss"] - before
    phases = getattr(datamodule.train_set, "setup_cpu_seconds", None)
    return {
        "seconds": seconds,
        "cpu": cpu,
        "held_mb": held / 1024,
        "phases": phases,
        "images": len(datamodule.train_set),
    }


def _workers_and_throughput(root: Path, samples: int, train_split: str, train_annotations: str) -> dict:
    """Set up, iterate the training loader (2 workers) until each worker made ``samples`` samples,
    read the workers' memory."""

    from tasks.datamodules import DetectionDataModule

    config = _data_config(root)
    config.update(train_images=train_split, train_annotations=train_annotations)
    datamodule = DetectionDataModule(**config)
    datamodule.setup("fit")
    gc.collect()
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    batch = next(iterator)  # workers started and warm
    workers = [worker.pid for worker in multiprocessing.active_children()]  # this process's: the loader's
    if len(workers) != 2:  # noqa: PLR2004
        raise RuntimeError(f"expected the loader's 2 worker processes, found {len(workers)}")
    first = [_memory_kb(pid) for pid in workers]
    made, start, cpu = 0, time.perf_counter(), _cpu_seconds(workers)
    while made < samples * len(workers):
        batch = next(iterator)
        made += len(batch[0])
    seconds, cpu = time.perf_counter() - start, _cpu_seconds(workers) - cpu
    after = [_memory_kb(pid) for pid in workers]
    del iterator, loader
    result = {
        "images": len(datamodule.train_set),
        "samples_per_s": made / seconds,
        "cpu_per_sample": cpu / made,
        "uss_first_mb": float(np.mean([m["uss"] for m in first])) / 1024,
        "uss_mb": float(np.mean([m["uss"] for m in after])) / 1024,
        "pss_mb": float(np.mean([m["pss"] for m in after])) / 1024,
        "samples_per_worker": made // len(workers),
    }
    return result


def _training_step(root: Path, batch_size: int) -> dict:
    """The SSDLite 320 training step (forward, backward, SGD) per sample on a batch of the
    validation split through the training augmentation (set-up of the small split only)."""
    import torch

    from tasks.datamodules import DetectionDataModule
    from vision_mnv2.models import ssdlite_mobilenet_v2

    config = _data_config(root)
    config.update(train_images="val2017", train_annotations="annotations/instances_val2017.json")
    datamodule = DetectionDataModule(**config)
    datamodule.setup("fit")
    samples = [datamodule.train_set[index] for index in range(batch_size)]
    images = [image for image, _ in samples]
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in samples]
    model = ssdlite_mobilenet_v2(num_classes=datamodule.num_classes, image_size=datamodule.image_size)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.15, momentum=0.9, weight_decay=4e-5)
    times, cpu = [], []
    for _ in range(4):  # the first is warm-up
        begin, begin_cpu = time.perf_counter(), time.process_time()
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        times.append(time.perf_counter() - begin)
        cpu.append(time.process_time() - begin_cpu)
    return {
        "step_samples_per_s": batch_size / float(np.median(times[1:])),
        "step_cpu_per_sample": float(np.median(cpu[1:])) / batch_size,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }


def _warm_page_cache(root: Path) -> None:
    for path in (root / "annotations").glob("*.json"):
        path.read_bytes()
    for split in ("train2017", "val2017"):
        for entry in os.scandir(root / split):
            entry.stat()


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--train-images", type=int, default=118287)
    parser.add_argument("--boxes", type=int, default=860001, help="training boxes (validation: in proportion)")
    parser.add_argument("--samples", type=int, default=2000, help="training samples per loader worker")
    parser.add_argument("--step-batch", type=int, default=8, help="batch of the timed training step (memory)")
    parser.add_argument("--root", default=None, help="where the set is generated; default in the cache")
    args = parser.parse_args(argv)

    from vision_mnv2.data import write_coco_sized_dataset
    from vision_mnv2.reports import command_line, publish, report_header

    cache = Path(os.environ.get("VISION_MNV2_CACHE", Path.home() / ".cache" / "vision_mnv2"))
    default = cache / f"coco_sized_{args.train_images}_{args.boxes}"
    start = time.perf_counter()
    root = write_coco_sized_dataset(Path(args.root) if args.root else default, args.train_images, args.boxes)
    print(f"COCO-sized set at {root} ({time.perf_counter() - start:.0f} s)")
    _warm_page_cache(root)

    reference = _in_child(_pycocotools_load, root)
    print("pycocotools", reference, flush=True)
    setup = _in_child(_datamodule_setup, root)
    print("setup", setup, flush=True)
    full = _in_child(_workers_and_throughput, root, args.samples, "train2017", "annotations/instances_train2017.json")
    print("full", full, flush=True)
    small = _in_child(_workers_and_throughput, root, args.samples, "val2017", "annotations/instances_val2017.json")
    print("small", small, flush=True)
    full.update(_in_child(_training_step, root, args.step_batch))
    print("step", full, flush=True)

    ratio = setup["cpu"] / reference["cpu"]
    lines = report_header(
        f"COCO-sized data: set-up, loader-worker memory, loader throughput ({reference['images']:,} "
        f"training images, {reference['boxes']:,} boxes)",
        command_line(__file__, argv),
        "Generated COCO-layout set (COCO 2017's image and box counts, 80 category "
        "ids, 24-point polygons: a JSON the size of instances_train2017.json; images hard links to six "
        "640x480-class JPEGs); page cache warm; one run each, in fresh processes. `data=coco` as "
        "the tools compose it (check_images quick, skip_bad). CPU seconds (all threads of the process) "
        "are the comparison: on a shared machine wall time measures the neighbours.",
    )
    lines += [
        "| set-up (train + val) | CPU seconds | ratio | wall seconds |",
        "|---|---|---|---|",
        f"| pycocotools `COCO(json)` of both files (reference) | {reference['cpu']:.1f} | 1.00 | {reference['seconds']:.1f} |",
        f"| `DetectionDataModule.setup('fit')` | {setup['cpu']:.1f} | {ratio:.2f} | {setup['seconds']:.1f} |",
    ]
    if setup["phases"]:
        lines.append(
            "| of which, training split (CPU seconds): "
            + ", ".join(f"{name} {value:.1f}" for name, value in setup["phases"].items())
            + " | | | |"
        )
    per_worker = full["uss_mb"] / small["uss_mb"]
    lines += [
        "",
        f"Memory the datasets hold in the main process (resident set after `setup('fit')`, less before): "
        f"{setup['held_mb']:,.0f} MB.",
        "",
        f"| loader worker (of 2), after {full['samples_per_worker']:,} training samples each "
        "| USS, MB | PSS, MB | USS after its first batch, MB | USS ratio |",
        "|---|---|---|---|---|",
        f"| {small['images']:,}-image training set (reference) | {small['uss_mb']:.0f} | {small['pss_mb']:.0f} "
        f"| {small['uss_first_mb']:.0f} | 1.00 |",
        f"| {full['images']:,}-image training set | {full['uss_mb']:.0f} | {full['pss_mb']:.0f} "
        f"| {full['uss_first_mb']:.0f} | {per_worker:.2f} |",
        "",
        "| training at 320, per sample | CPU ms | samples per CPU second | ratio | wall samples/s |",
        "|---|---|---|---|---|",
        f"| SSDLite 320 step: forward, backward, SGD (batch {full['batch_size']}, {full['threads']} threads; "
        f"reference) | {full['step_cpu_per_sample'] * 1e3:.0f} | {1 / full['step_cpu_per_sample']:.1f} | 1.00 "
        f"| {full['step_samples_per_s']:.1f} |",
        f"| training loader, 2 workers (decode + SSD augmentation) | {full['cpu_per_sample'] * 1e3:.1f} "
        f"| {1 / full['cpu_per_sample']:.1f} | {full['step_cpu_per_sample'] / full['cpu_per_sample']:.2f} "
        f"| {full['samples_per_s']:.1f} |",
    ]
    publish("\n".join(lines) + "\n", "coco_scale", update_docs=args.update_docs, docs=args.docs)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
