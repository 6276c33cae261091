"""Fine-tuning SSDLite on real photos: this project's preset against torchvision's SSD training
reference (the ssdlite320 recipe of references/detection) with the SSDLite head on this project's
MobileNetV2, same weights, same steps, same images seen, same photos, scored the same way, one run,
several seeds:

    python tools/benchmarks/finetune_detection.py --init mnv2.ckpt \\
        --annotations ../shared/data/kangaroo/annots --images ../shared/data/kangaroo/images \\
        [--steps 150] [--seeds 2] [--update-docs]
    python tools/benchmarks/finetune_detection.py --init mnv2.ckpt \\
        --annotations ../shared/data/cards/train --val-annotations ../shared/data/cards/test

The photos are labelled in Pascal VOC XML. Without --val-annotations every 5th photo (sorted by
name) goes to validation; --images defaults to the annotations' folder (photos beside their XML).
--init: a checkpoint with ImageNet weights (e.g. Google's classifier converted by tools/convert.py).

The reference, written plainly with torchvision as references/detection/train.py trains
ssdlite320_mobilenet_v3_large (`--lr 0.15 --batch-size 24` on 8 GPUs, `--weight-decay 0.00004
--lr-scheduler cosineannealinglr --data-augmentation ssdlite`): SGD momentum 0.9 at 0.15 scaled
linearly to the batch (the reference's rule for other GPU counts), weight decay 4e-5 on every
parameter, a linear warm-up from 1/1000 over the first epoch's iterations (at most 1000), cosine
decay over the steps; RandomIoUCrop + horizontal flip; every layer trained, batch norm in training
mode with momentum 0.03; photos without boxes left out of training. The network is the preset's
(same anchors, head, loss and post-processing), so that only the recipe differs. It trains at the
preset's batch size."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tasks.cli import compose_config, run_tool
from vision_mnv2.data.coco import CocoDetection
from vision_mnv2.data.voc_xml import voc_xml_to_coco, write_coco_json
from vision_mnv2.pipelines import DetectionPipeline, describe
from vision_mnv2.reference_training import train_steps
from vision_mnv2.reports import (
    command_line,
    publish,
    recipes_argument_parser,
    recipes_report,
    score_measured,
)

__all__ = ["REFERENCE_LR", "compare_recipes", "reference_recipe", "split_voc_set"]

PRESET = "experiment=finetune_ssdlite_custom"
REFERENCE = "torchvision SSD reference (ssdlite320 recipe)"
# references/detection: lr 0.15 for 8 GPUs x 24 images, scaled linearly for other batches.
REFERENCE_LR, REFERENCE_BATCH = 0.15, 8 * 24
REFERENCE_NETWORK = ["model.freeze_backbone=false", "model.frozen_bn=false", "head.batch_norm_momentum=0.03"]


def split_voc_set(
    annotations: Path, images: Path, root: Path, val_annotations: Path | None = None, val_images: Path | None = None
) -> dict[str, int]:
    """A VOC XML detection set as ``root/{train,val}.json`` with absolute image folders in
    ``root/{train,val}_images`` (links): the given validation set, or every 5th photo (sorted by
    name). The classes are the training set's, in sorted order. Returns the image counts
    (``train``, ``val``) and the number of ``classes``."""
    root.mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in annotations.glob("*.xml"))
    if not stems:
        raise FileNotFoundError(f"no VOC XML files in {str(annotations)!r}")
    if val_annotations is None:
        val = set(stems[::5])
        splits = {
            "train": (annotations, images, [s for s in stems if s not in val]),
            "val": (annotations, images, sorted(val)),
        }
    else:
        val_stems = sorted(p.stem for p in val_annotations.glob("*.xml"))
        splits = {
            "train": (annotations, images, stems),
            "val": (val_annotations, val_images or val_annotations, val_stems),
        }
    train = voc_xml_to_coco(annotations, images, ids=splits["train"][2])
    names = [c["name"] for c in sorted(train["categories"], key=lambda c: c["id"])]
    counts = {"classes": len(names)}
    for split, (xml_dir, image_dir, ids) in splits.items():
        coco = train if split == "train" else voc_xml_to_coco(xml_dir, image_dir, class_names=names, ids=ids)
        write_coco_json(coco, root / f"{split}.json")
        link = root / f"{split}_images"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path(image_dir).resolve())
        counts[split] = len(ids)
    return counts


class _ReferenceTrainSet(torch.utils.data.Dataset):
    """The training photos with boxes through the reference's ``ssdlite`` augmentation (v2:
    RandomIoUCrop, horizontal flip, to float in [0, 1], boxes sanitised); the detector resizes."""

    def __init__(self, photos: CocoDetection) -> None:
        from torchvision.transforms import v2  # noqa: PLC0415

        self.photos = photos
        # As the reference's dataset does, photos without boxes are left out of training.
        self.indices = [i for i in range(len(photos)) if len(photos.target(int(photos.image_ids[i]))[0])]
        self.transform = v2.Compose(
            [
                v2.RandomIoUCrop(),
                v2.RandomHorizontalFlip(0.5),
                v2.ToDtype(torch.float32, scale=True),
                v2.SanitizeBoundingBoxes(),
            ]
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from torchvision import tv_tensors  # noqa: PLC0415

        image, target = self.photos[self.indices[index]]
        image = tv_tensors.Image(torch.tensor(image).permute(2, 0, 1).contiguous())  # a copy: the array is read-only
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        image, sample = self.transform(image, {"boxes": boxes, "labels": target["labels"]})
        return image.as_subclass(Tensor), {"boxes": sample["boxes"].as_subclass(Tensor), "labels": sample["labels"]}


def _as_lists(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)


def reference_recipe(model: nn.Module, photos: CocoDetection, steps: int, batch_size: int, seed: int = 0) -> nn.Module:
    """The reference recipe (module docstring) training ``model`` for ``steps`` steps of ``batch_size``."""
    torch.manual_seed(seed)
    data = _ReferenceTrainSet(photos)
    lr = REFERENCE_LR * batch_size / REFERENCE_BATCH
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)

    def schedule(loader) -> torch.optim.lr_scheduler.LRScheduler:
        warmup = min(1000, len(loader) - 1)  # references/detection/engine.py, epoch 0

        def factor(step: int) -> float:
            ramp = 1.0 if step >= warmup else 1e-3 + (1 - 1e-3) * step / warmup
            return ramp * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return train_steps(
        model, data, batch_size=batch_size, steps=steps, optimizer=optimizer, scheduler=schedule, loss=None,
        seed=seed, collate_fn=_as_lists,
    )  # fmt: skip


def _reference_network(overrides: list[str], output_dir: Path, init: str) -> nn.Module:
    """The preset's network, built as ``tools/train.py`` builds it from ``init``, with every layer
    trainable and torchvision's batch-norm momentum."""
    from hydra.utils import instantiate  # noqa: PLC0415

    from tasks.checkpoint_config import inherit_from_init  # noqa: PLC0415
    from vision_mnv2.models import transfer_weights  # noqa: PLC0415

    cfg = compose_config("train", [*overrides, *REFERENCE_NETWORK], output_dir)
    inherit_from_init(cfg)  # the checkpoint's input conventions, as the preset's run takes them
    model = instantiate(cfg.model)
    transfer_weights(model, init)
    return model


def _map(model: nn.Module, val: CocoDetection) -> float:
    meta = describe("detection", model, {}, class_names=list(val.class_names), category_ids=list(val.category_ids))
    return DetectionPipeline(meta, model.eval()).evaluate(val)["mAP"]


def compare_recipes(
    root: Path,
    init: str,
    num_classes: int,
    steps: int,
    output_dir: Path,
    seeds: int = 1,
    preset_overrides: Sequence[str] = (),
) -> tuple[list[tuple[str, list[float], float]], int]:
    """``([(recipe, COCO mAP per seed, training seconds per seed), ...], batch size)`` for the
    reference recipe and the fine-tuning preset, ``steps`` steps of the preset's batch each, on
    ``root/{train,val}.json`` (:func:`split_voc_set`); ``preset_overrides`` change the preset."""
    from tasks.runner import train_model  # noqa: PLC0415

    common = [
        f"data.root={root.resolve()}",
        f"data.num_classes={num_classes}",
        "data.train_images=train_images",
        "data.train_annotations=train.json",
        "data.val_images=val_images",
        "data.val_annotations=val.json",
        f"init_from={init}",
        f"trainer.max_steps={steps}",
        "data.skip_bad=true",  # real photos: a truncated one is left out (logged) by both recipes
    ]
    preset = [PRESET, *preset_overrides]
    batch = int(compose_config("train", [*preset, *common], output_dir / "composed").data.batch_size)
    train = CocoDetection(root / "train_images", root / "train.json", skip_bad=True)
    val = CocoDetection(root / "val_images", root / "val.json", skip_bad=True)
    scores: dict[str, list[float]] = {REFERENCE: [], PRESET: []}
    seconds = {REFERENCE: 0.0, PRESET: 0.0}
    for seed in range(seeds):
        torch.manual_seed(seed)  # the new class head's initialisation
        model = _reference_network([*preset, *common], output_dir / "reference_composed", init)
        start = time.perf_counter()
        model = reference_recipe(model, train, steps, batch, seed=seed)
        seconds[REFERENCE] += time.perf_counter() - start
        scores[REFERENCE].append(score_measured(REFERENCE, seed, _map(model, val)))
        start = time.perf_counter()
        model = train_model([*preset, *common, f"seed={seed}"], output_dir / f"preset_seed{seed}")
        seconds[PRESET] += time.perf_counter() - start
        scores[PRESET].append(score_measured(PRESET, seed, _map(model, val)))
    rows = [(REFERENCE, scores[REFERENCE], seconds[REFERENCE] / seeds)]
    return [*rows, (" ".join(preset), scores[PRESET], seconds[PRESET] / seeds)], batch


def report(rows, counts: dict[str, int], name: str, init: str, steps: int, batch: int, command: str) -> str:
    seeds = len(rows[0][1])
    return recipes_report(
        f"Detection fine-tuning: preset against torchvision's SSD reference, {steps} steps of {batch}",
        command,
        f"Photos: {counts['train']} training / {counts['val']} validation ({name}); both recipes start from "
        f"`{Path(init).name}`, train the same network {steps} steps of {batch} photos ({steps * batch} seen) "
        f"and are scored by the same pipeline (COCO mAP@[.5:.95], pycocotools); {seeds} seed(s): mean ± "
        "standard deviation (lowest-highest).",
        rows,
        "mAP",
    )


def main(argv: list[str] | None = None) -> int:
    parser = recipes_argument_parser(__doc__)
    parser.add_argument("--init", required=True, help="checkpoint both recipes start from")
    parser.add_argument("--annotations", required=True, help="VOC XML folder of the training photos")
    parser.add_argument("--images", help="their photos (default: the XML folder)")
    parser.add_argument("--val-annotations", help="VOC XML folder of the validation photos (default: every 5th)")
    parser.add_argument("--val-images", help="their photos (default: their XML folder)")
    parser.add_argument("--output", default="outputs/benchmarks/finetune_detection")
    args = parser.parse_args(argv)
    output = Path(args.output)
    annotations = Path(args.annotations)
    val_annotations = Path(args.val_annotations) if args.val_annotations else None
    counts = split_voc_set(
        annotations,
        Path(args.images or annotations),
        output / "data",
        val_annotations,
        Path(args.val_images) if args.val_images else val_annotations,
    )
    rows, batch = compare_recipes(
        output / "data", args.init, counts["classes"], args.steps, output, args.seeds, args.preset_override
    )
    name = annotations.resolve().parent.name  # kangaroo/annots, cards/train: the set's folder
    text = report(rows, counts, name, args.init, args.steps, batch, command_line(__file__, argv))
    publish(
        text,
        "finetune_detection",
        update_docs=args.update_docs,
        docs=args.docs,
        report_file=output / "finetune_detection.md",
    )
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
