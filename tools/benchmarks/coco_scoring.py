"""Time of a detection validation epoch with each COCOeval backend, measured side by side in one run:

    python tools/benchmarks/coco_scoring.py [--val-images 200 1500] [--repeats 2] [--update-docs]

The SSDLite task's validation epoch (``trainer.validate`` on ``DetectionTask``: the model on every
image, then the COCO scoring and the results file) on the synthetic COCO validation split (200
images, the default task's data) and on a larger generated split, with ``module.coco_backend``
``pycocotools`` (what every epoch ran before) and ``faster_coco_eval`` (the default now), alternating.
The model is the task's default (width 1.0, 192x192, 6 classes) with its initial weights, seeded:
it keeps the most detections an image may have (100), as a young model does, which is the most
work for the scoring. Reported: the whole epoch, and the scoring alone (``compute``: results file
and COCOeval). Writes docs/BENCHMARKS.md with ``--update-docs``."""

from __future__ import annotations

import os
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from tasks.cli import run_tool
from tasks.datamodules import DetectionDataModule
from tasks.detection import DetectionTask
from vision_mnv2.data import write_detection_dataset
from vision_mnv2.models import ssdlite_mobilenet_v2
from vision_mnv2.reports import argument_parser, command_line, publish, report_header

BACKENDS = ("pycocotools", "faster_coco_eval")


class _TimedDetectionTask(DetectionTask):
    """Records how long the scoring at the end of each validation epoch takes."""

    scoring_seconds = 0.0

    def on_validation_epoch_end(self) -> None:
        start = time.perf_counter()
        super().on_validation_epoch_end()
        self.scoring_seconds = time.perf_counter() - start


def _validation_epoch(root: Path, backend: str, workers: int, out_dir: str) -> tuple[float, float, float]:
    """Seconds of one validation epoch, of its scoring, and the mAP it logged."""
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=6, width_mult=1.0, image_size=192)
    module = _TimedDetectionTask(model, partial(torch.optim.AdamW, lr=1e-3), coco_backend=backend)
    datamodule = DetectionDataModule(root, num_classes=6, image_size=192, batch_size=16, num_workers=workers)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    datamodule.setup("validate")  # the set-up checks are not part of an epoch
    start = time.perf_counter()
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return time.perf_counter() - start, module.scoring_seconds, float(metrics["val/mAP"])


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--val-images", type=int, nargs="+", default=[200, 1500], help="split sizes")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best of each is kept")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (the task's default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    cache = Path(os.environ.get("VISION_MNV2_CACHE", Path.home() / ".cache" / "vision_mnv2"))
    lines = report_header(
        "COCO scoring of a validation epoch: faster-coco-eval against pycocotools",
        command_line(__file__, argv),
        f"SSDLite (width 1.0, 192x192, initial weights: 100 detections per image) "
        f"on synthetic COCO validation splits (320x240, 1-5 objects), batch 16, {args.workers} loader workers; "
        f"the backends alternate, best of {args.repeats}. Scoring = `compute()`: results file and COCOeval.",
        packages=("torch", "pycocotools", "faster-coco-eval"),
    )
    lines += [
        "| split | backend | epoch s | scoring s | mAP | epoch vs pycocotools | scoring vs pycocotools |",
        "|---|---|---|---|---|---|---|",
    ]
    for count in args.val_images:
        if count == 200:
            root = write_detection_dataset(cache / "synthetic_coco_v1", num_classes=6, train_images=800, val_images=200,
                                           image_size=(240, 320), max_objects=5, seed=0)  # fmt: skip
        else:
            root = write_detection_dataset(cache / f"synthetic_coco_val{count}", num_classes=6, train_images=16,
                                           val_images=count, image_size=(240, 320), max_objects=5, seed=1)  # fmt: skip
        best: dict[str, tuple[float, float, float]] = {}
        with tempfile.TemporaryDirectory() as out_dir:
            for _ in range(args.repeats):
                for backend in BACKENDS:
                    epoch, scoring, mAP = _validation_epoch(root, backend, args.workers, out_dir)
                    print(f"{count} images, {backend}: epoch {epoch:.2f} s, scoring {scoring:.2f} s, mAP {mAP:.6f}")
                    previous = best.get(backend)
                    best[backend] = (
                        (min(epoch, previous[0]), min(scoring, previous[1]), mAP) if previous else (epoch, scoring, mAP)
                    )
        reference = best["pycocotools"]
        for backend in BACKENDS:
            epoch, scoring, mAP = best[backend]
            lines.append(
                f"| {count} images | {backend} | {epoch:.2f} | {scoring:.2f} | {mAP:.4f} | "
                f"{epoch / reference[0]:.2f} | {scoring / reference[1]:.2f} |"
            )
    publish("\n".join(lines) + "\n", "coco_scoring", update_docs=args.update_docs, docs=args.docs)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
