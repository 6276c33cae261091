"""Cost of the data safeguards, measured in one run against what they sit beside:

    python tools/benchmarks/data_safeguards.py [--images 'DIR/*.jpg'] [--repeats 3] [--update-docs]

- set-up image checks (``data.check_images``: none / quick / full) against decoding every image;
- per-sample augmentation seeding (what makes resumed runs exact) against loading one SSD
  training sample (decode + augmentation).

Default images: the synthetic COCO training split (written to the cache when missing). Files are
read once before timing, so these are warm-page-cache numbers. Writes docs/BENCHMARKS.md."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from tasks.cli import run_tool
from tasks.datamodules import sample_seed, seed_transform
from vision_mnv2.data import CocoDetection, DatasetError, read_rgb, write_detection_dataset
from vision_mnv2.data.checks import check_image_files, parallel_map
from vision_mnv2.data.detection_transforms import SSDTrainTransform
from vision_mnv2.reports import argument_parser, command_line, publish, report_header


def _best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _decode(path: str):
    try:
        return read_rgb(path)
    except DatasetError:  # a bad file costs its decoding attempt too
        return None


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--images", default=None, help="glob of image files; default the synthetic COCO train split")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    cache = Path(os.environ.get("VISION_MNV2_CACHE", Path.home() / ".cache" / "vision_mnv2"))
    coco_root = write_detection_dataset(cache / "synthetic_coco_v1", num_classes=6, train_images=800, val_images=200,
                                        image_size=(240, 320), max_objects=5, seed=0)  # fmt: skip
    paths = sorted(glob.glob(args.images)) if args.images else sorted(glob.glob(str(coco_root / "train2017" / "*.jpg")))
    if not paths:
        parser.error(f"no image matches {args.images!r}")
    for path in paths:  # warm the page cache: compare the work, not the disk
        Path(path).read_bytes()

    decode = _best_seconds(lambda: parallel_map(_decode, paths), args.repeats)
    lines = report_header(
        f"Data safeguards: set-up image checks and per-sample seeding ({len(paths)} images)",
        command_line(__file__, argv),
        f"Images: {args.images or 'synthetic COCO train split (320x240 JPEG)'}; page cache warm; best of {args.repeats}. "
        "Reference: decoding every image to RGB on the same threads, as the loaders would.",
    )
    lines += [
        "| work | seconds | images/s | time vs decoding every image |",
        "|---|---|---|---|",
        f"| decode every image (reference) | {decode:.2f} | {len(paths) / decode:,.0f} | 1.00 |",
    ]
    for mode in ("none", "quick", "full"):
        seconds = _best_seconds(lambda mode=mode: check_image_files(paths, mode), args.repeats)
        lines.append(
            f"| `data.check_images={mode}` | {seconds:.2f} | {len(paths) / seconds:,.0f} | {seconds / decode:.2f} |"
        )

    # Per-sample seeding against loading one SSD training sample, single thread, same samples.
    dataset = CocoDetection(coco_root / "train2017", coco_root / "annotations" / "instances_train2017.json",
                            SSDTrainTransform(192, zoom_out_prob=0.3, max_zoom_out=2.0, crop_prob=0.5, hflip=0.5))  # fmt: skip
    count = min(200, len(dataset))
    load = _best_seconds(lambda: [dataset[i] for i in range(count)], args.repeats) / count
    seed = (
        _best_seconds(lambda: [seed_transform(dataset, sample_seed(42, 1, i)) for i in range(count)], args.repeats)
        / count
    )
    lines += [
        "",
        "| per training sample (SSDLite augmentation, 1 thread) | microseconds | ratio |",
        "|---|---|---|",
        f"| load + augment (reference) | {load * 1e6:,.0f} | 1.00 |",
        f"| seed the augmentation from (seed, epoch, index) | {seed * 1e6:,.0f} | {seed / load:.3f} |",
    ]
    section = "data_safeguards" + ("" if not args.images else "_custom")
    publish("\n".join(lines) + "\n", section, update_docs=args.update_docs, docs=args.docs)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
