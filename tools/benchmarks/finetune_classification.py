"""Fine-tuning a classifier on real photos: this project's preset against torchvision's transfer-
learning tutorial recipe, same weights, same steps, same images seen (the tutorial trains at the
preset's batch size), same photos, one run, several seeds:

    python tools/benchmarks/finetune_classification.py --init mnv2.ckpt \\
        --voc-annotations ../shared/data/kangaroo/annots --images ../shared/data/kangaroo/images \\
        [--steps 150] [--seeds 3] [--from-scratch] [--update-docs]

The photos: a folder in the ImageNet layout (--folder), or a detection set in Pascal VOC XML cut
into object and background crops (--voc-annotations, --images). --init: a checkpoint with ImageNet
weights (e.g. Google's classifier converted by tools/convert.py).

With --from-scratch the task's synthetic-data recipe trains beside them (one seed); every recipe is
scored the same way."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tasks.cli import compose_config, run_tool
from vision_mnv2.checkpoint import load_model
from vision_mnv2.data import ImageFolderClassification
from vision_mnv2.models import transfer_weights
from vision_mnv2.pipelines import ClassificationPipeline, describe
from vision_mnv2.reference_training import train_steps
from vision_mnv2.reports import (
    command_line,
    publish,
    recipes_argument_parser,
    recipes_report,
    score_measured,
)

__all__ = ["compare_recipes", "tutorial_recipe"]


def tutorial_recipe(init: str, root: Path, steps: int, seed: int = 0, batch_size: int = 4) -> torch.nn.Module:
    """torchvision's "Transfer learning for computer vision" tutorial, fine-tuning the whole network:
    RandomResizedCrop(224) + flip, SGD lr 0.001 momentum 0.9, StepLR(7 epochs, 0.1), cross-entropy;
    the classifier layer replaced for the new classes. The tutorial's batch is 4; ``batch_size``
    sets another, so that it sees as many images as the recipe it is compared with. The network is
    the one of ``init`` (its input conventions included), so that only the recipe differs."""
    from torchvision import datasets, transforms  # noqa: PLC0415

    torch.manual_seed(seed)
    _, meta = load_model(init)
    data = datasets.ImageFolder(
        str(root / "train"),
        transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        ),
    )
    args = {**meta.builder_args, "num_classes": len(data.classes)}
    from vision_mnv2.models.registry import build_model  # noqa: PLC0415

    model = build_model(meta.builder, args)
    transfer_weights(model, init)  # the backbone; the classifier layer is new (other classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    train_steps(
        model,
        data,
        batch_size=batch_size,
        steps=steps,
        optimizer=optimizer,
        # 7 epochs of the loader's batches
        scheduler=lambda loader: torch.optim.lr_scheduler.StepLR(optimizer, step_size=7 * len(loader), gamma=0.1),
        loss=torch.nn.CrossEntropyLoss(),
        seed=seed,
    )
    model.build_config["args"]["num_classes"] = len(data.classes)
    return model


def _top1(model: torch.nn.Module, root: Path, image_size: int = 224) -> float:
    val = ImageFolderClassification(root, "val")
    meta = describe("classification", model, {"image_size": image_size}, class_names=list(val.classes))
    return ClassificationPipeline(meta, model.eval()).evaluate(val)["top1"]


PRESET = "experiment=finetune_classification_custom"
TUTORIAL = "torchvision transfer-learning tutorial"
FROM_SCRATCH = "task=classification (the synthetic-data recipe)"


def compare_recipes(
    root: Path,
    init: str,
    steps: int,
    output_dir: Path,
    seeds: int = 1,
    from_scratch: bool = False,
    preset_overrides: Sequence[str] = (),
) -> tuple[list[tuple[str, list[float], float]], int]:
    """``([(recipe, top-1 on root/val per seed, training seconds per seed), ...], batch size)`` for
    the tutorial recipe and the fine-tuning preset, each trained ``steps`` steps of the preset's
    batch size per seed (the preset as ``tools/train.py`` trains it), and with ``from_scratch`` the
    task's synthetic-data recipe (first seed only). ``preset_overrides`` change the preset (to
    measure a variant of it)."""
    from tasks.runner import train_model  # noqa: PLC0415

    classes = len([p for p in (root / "train").iterdir() if p.is_dir()])
    common = [f"data.root={root}", f"data.num_classes={classes}", f"init_from={init}", f"trainer.max_steps={steps}"]
    preset = [PRESET, *preset_overrides]
    batch = int(compose_config("train", [*preset, *common], output_dir / "composed").data.batch_size)
    scores: dict[str, list[float]] = {TUTORIAL: [], PRESET: []}
    seconds: dict[str, float] = {TUTORIAL: 0.0, PRESET: 0.0}
    for seed in range(seeds):
        start = time.perf_counter()
        scores[TUTORIAL].append(
            score_measured(TUTORIAL, seed, _top1(tutorial_recipe(init, root, steps, seed=seed, batch_size=batch), root))
        )
        seconds[TUTORIAL] += time.perf_counter() - start
        start = time.perf_counter()
        overrides = [*preset, *common, f"seed={seed}"]
        scores[PRESET].append(
            score_measured(PRESET, seed, _top1(train_model(overrides, output_dir / f"preset_seed{seed}"), root))
        )
        seconds[PRESET] += time.perf_counter() - start
    rows = [(name, scores[name], seconds[name] / seeds) for name in (TUTORIAL, PRESET)]
    rows[1] = (" ".join(preset), *rows[1][1:])
    if from_scratch:
        start = time.perf_counter()
        overrides = ["task=classification", "data=imagenet_custom", "data.image_size=224", f"data.batch_size={batch}"]
        model = train_model(overrides + common, output_dir / "task")
        rows.append((FROM_SCRATCH, [_top1(model, root)], time.perf_counter() - start))
    return rows, batch


def report(rows, root: Path, init: str, steps: int, batch: int, command: str) -> str:
    train = sum(1 for p in (root / "train").rglob("*.jpg"))
    val = sum(1 for p in (root / "val").rglob("*.jpg"))
    seeds = len(rows[0][1])
    return recipes_report(
        f"Classification fine-tuning: preset against torchvision's tutorial recipe, {steps} steps of {batch}",
        command,
        f"Photos: {train} training / {val} validation ({root.name}); every recipe starts from "
        f"`{Path(init).name}`, trains {steps} steps of {batch} images ({steps * batch} images seen; the "
        "tutorial's own batch is 4) and is scored on the same validation photos (shorter side to 256, "
        f"centre 224); {seeds} seed(s): mean ± standard deviation (lowest-highest).",
        rows,
        "top-1",
    )


def main(argv: list[str] | None = None) -> int:
    parser = recipes_argument_parser(__doc__)
    parser.add_argument("--init", required=True, help="checkpoint every recipe starts from")
    parser.add_argument("--folder", help="photos in the ImageNet layout: train/<class>/, val/<class>/")
    parser.add_argument("--voc-annotations", help="VOC XML folder of a detection set, cut into a 2-class set")
    parser.add_argument("--images", help="the detection set's images")
    parser.add_argument("--train-images", type=int, default=60, help="photos of the detection set for training")
    parser.add_argument("--from-scratch", action="store_true", help="also the task's synthetic-data recipe")
    parser.add_argument("--output", default="outputs/benchmarks/finetune_classification")
    args = parser.parse_args(argv)
    if not args.folder and not (args.voc_annotations and args.images):
        parser.error("give --folder, or --voc-annotations and --images")

    from vision_mnv2.data.crops import write_object_background_crops  # noqa: PLC0415
    from vision_mnv2.data.voc_xml import voc_xml_to_coco  # noqa: PLC0415

    output = Path(args.output)
    root = (
        Path(args.folder)
        if args.folder
        else Path(tempfile.mkdtemp(prefix="crops_", dir=output.parent if output.parent.is_dir() else None))
    )
    if not args.folder:
        coco = voc_xml_to_coco(args.voc_annotations, args.images)
        write_object_background_crops(coco, args.images, root, args.train_images)

    rows, batch = compare_recipes(
        root, args.init, args.steps, output, args.seeds, args.from_scratch, args.preset_override
    )
    text = report(rows, root, args.init, args.steps, batch, command_line(__file__, argv))
    publish(
        text,
        "finetune_classification",
        update_docs=args.update_docs,
        docs=args.docs,
        report_file=output / "finetune_classification.md",
    )
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
