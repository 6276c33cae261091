"""Throughput of the SSD training data (decode + augmentation, through the training loader) with
this project's ``SSDTrainTransform`` against another implementation of it, side by side in one run:

    git show 9dfff61:vision_mnv2/data/detection_transforms.py > /tmp/hand_written.py
    python tools/benchmarks/ssd_augmentation.py --baseline /tmp/hand_written.py [--workers 0 2] [--update-docs]

``--baseline``: a Python file defining ``SSDTrainTransform`` with the same arguments (above: the
hand-written zoom-out and crop that torchvision's ``RandomZoomOut`` / ``RandomIoUCrop`` replaced).
Both run in ``DetectionDataModule``'s training loader (per-sample seeding, batches of 16, one epoch
of the synthetic COCO training split, 800 images of 320x240) with the default task's augmentation
(192x192, zoom-out 0.3 up to 2x, crop 0.5) and with the COCO recipe's (320x320, zoom-out 0.5 up to
4x, crop always), for each number of loader workers, alternating. Writes docs/BENCHMARKS.md with
``--update-docs``."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch

from tasks.cli import run_tool
from tasks.datamodules import DetectionDataModule
from vision_mnv2.data import write_detection_dataset
from vision_mnv2.data.detection_transforms import SSDTrainTransform
from vision_mnv2.reports import argument_parser, command_line, publish, report_header

SETTINGS = {
    "default task (192, zoom-out 0.3 up to 2x, crop 0.5)": (
        192,
        {"zoom_out_prob": 0.3, "max_zoom_out": 2.0, "crop_prob": 0.5, "hflip": 0.5},
    ),
    "COCO recipe (320, zoom-out 0.5 up to 4x, crop 1.0)": (320, {}),
}


def _load_transform_class(path: str):
    spec = importlib.util.spec_from_file_location("baseline_detection_transforms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SSDTrainTransform


def _samples_per_second(root: Path, transform, image_size: int, workers: int) -> float:
    datamodule = DetectionDataModule(root, num_classes=6, image_size=image_size, batch_size=16, num_workers=workers)
    datamodule.setup("fit")
    datamodule.train_set.transform = transform
    loader = datamodule.train_dataloader()
    start = time.perf_counter()
    samples = sum(len(images) for images, _ in loader)  # worker start-up included, as every run pays it once
    seconds = time.perf_counter() - start
    return samples / seconds


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--baseline", required=True, help="a .py file defining the SSDTrainTransform to compare with")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; the best of each is kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the loader's work, on the main process or in the workers
    baseline_class = _load_transform_class(args.baseline)

    cache = Path(os.environ.get("VISION_MNV2_CACHE", Path.home() / ".cache" / "vision_mnv2"))
    root = write_detection_dataset(cache / "synthetic_coco_v1", num_classes=6, train_images=800, val_images=200,
                                   image_size=(240, 320), max_objects=5, seed=0)  # fmt: skip
    for path in (root / "train2017").iterdir():  # warm the page cache: compare the work, not the disk
        path.read_bytes()
    lines = report_header(
        "SSD training augmentation: torchvision's zoom-out and IoU crop against the hand-written ones",
        command_line(__file__, argv),
        "One epoch of the synthetic COCO training split (800 images, 320x240 JPEG) "
        f"through `DetectionDataModule`'s training loader (batches of 16, per-sample seeding), decoding included; "
        f"baseline: `SSDTrainTransform` of {Path(args.baseline).name}; alternating, best of {args.repeats}.",
    )
    lines += [
        "| augmentation | loader workers | baseline samples/s | torchvision samples/s | ratio (torchvision / baseline) |",
        "|---|---|---|---|---|",
    ]
    for name, (image_size, augment) in SETTINGS.items():
        for workers in args.workers:
            best = {"baseline": 0.0, "torchvision": 0.0}
            for _ in range(args.repeats):
                for label, transform_class in (("baseline", baseline_class), ("torchvision", SSDTrainTransform)):
                    rate = _samples_per_second(root, transform_class(image_size, **augment), image_size, workers)
                    print(f"{name}, {workers} workers, {label}: {rate:.1f} samples/s")
                    best[label] = max(best[label], rate)
            lines.append(
                f"| {name} | {workers} | {best['baseline']:.1f} | {best['torchvision']:.1f} | "
                f"{best['torchvision'] / best['baseline']:.2f} |"
            )
    publish("\n".join(lines) + "\n", "ssd_augmentation", update_docs=args.update_docs, docs=args.docs)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
