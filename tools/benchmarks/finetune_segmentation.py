"""Fine-tuning DeepLabv3 on real photos: this project's preset against torchvision's segmentation
reference recipe (DeepLabHead on MobileNetV2), same weights, same steps, same images seen, same
photos, scored the same way, one run, several seeds:

    python tools/benchmarks/finetune_segmentation.py --init mnv2.ckpt --root ../shared/data/pets \\
        [--steps 150] [--crop 321] [--seeds 2] [--update-docs]

--root: photos in the VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt,
class_names.txt or --classes). --init: a checkpoint with ImageNet weights (e.g. Google's classifier
converted by tools/convert.py); both recipes start their backbone from it.

The reference, written plainly with torchvision as references/segmentation/train.py trains:
DeepLabHead (ASPP at rates 12/24/36, 3x3 conv, 1x1 classifier) on the backbone's last 1280-channel
layer at output stride 16; random resize of the shorter side to 0.5-2x the base size (520 for a
480 crop, scaled to --crop), horizontal flip, random crop padded with the ignore label; SGD lr 0.01
momentum 0.9 weight decay 1e-4 on every parameter, polynomial decay (power 0.9) over the steps,
cross-entropy ignoring 255, batch norm in training mode. No auxiliary loss: MobileNetV2 has no
torchvision auxiliary tap. It trains at the preset's batch size."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tasks.cli import compose_config, run_tool
from vision_mnv2.checkpoint import load_model
from vision_mnv2.data.voc import VOCSegmentation
from vision_mnv2.models import MobileNetV2Backbone, deeplabv3_mobilenet_v2, load_backbone_weights
from vision_mnv2.models.normalization import InputNormalization
from vision_mnv2.pipelines import SegmentationPipeline, describe
from vision_mnv2.reference_training import train_steps
from vision_mnv2.reports import (
    command_line,
    publish,
    recipes_argument_parser,
    recipes_report,
    score_measured,
)

__all__ = ["ReferenceDeepLab", "compare_recipes", "reference_recipe"]

PRESET = "experiment=finetune_deeplabv3_custom"
REFERENCE = "torchvision segmentation reference (DeepLabHead)"


class ReferenceDeepLab(nn.Module):
    """torchvision's DeepLabHead on MobileNetV2's last layer at output stride 16, with the input
    conventions (normalisation, padding, width) of the weights it starts from."""

    def __init__(self, num_classes: int, builder_args: dict) -> None:
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead  # noqa: PLC0415

        super().__init__()
        self.normalize = InputNormalization(builder_args.get("normalization", "imagenet"))
        self.backbone = MobileNetV2Backbone(
            width_mult=builder_args.get("width_mult", 1.0),
            output_stride=16,
            out_features=["layer19"],
            round_nearest=builder_args.get("round_nearest", 8),
            tf_padding=builder_args.get("tf_padding", False),
        )
        self.head = DeepLabHead(self.backbone.out_channels["layer19"], num_classes)

    def forward(self, images: Tensor) -> Tensor:
        (features,) = self.backbone(self.normalize(images)).values()
        return F.interpolate(self.head(features), size=images.shape[-2:], mode="bilinear", align_corners=False)


class _ReferenceTrainSet(torch.utils.data.Dataset):
    """The VOC-layout training list through torchvision's reference transforms (v2, image and mask
    together)."""

    def __init__(self, root: Path, crop: int) -> None:
        from torchvision import tv_tensors  # noqa: PLC0415
        from torchvision.transforms import v2  # noqa: PLC0415

        self.root = root
        self.ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
        base = round(crop * 520 / 480)  # the reference's base size for its 480 crop
        self.transform = v2.Compose(
            [
                v2.RandomResize(int(0.5 * base), int(2.0 * base)),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0}),
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image  # noqa: PLC0415
        from torchvision import tv_tensors  # noqa: PLC0415
        from torchvision.transforms.v2 import functional as TF  # noqa: PLC0415

        name = self.ids[index]
        image = tv_tensors.Image(TF.pil_to_tensor(Image.open(self.root / "JPEGImages" / f"{name}.jpg").convert("RGB")))
        mask = tv_tensors.Mask(torch.as_tensor(_read_mask(self.root / "SegmentationClass" / f"{name}.png")))
        image, mask = self.transform(image, mask)
        return image, mask.long()


def _read_mask(path: Path):
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    return np.array(Image.open(path))  # palette or grayscale: the pixel values are the class indices


def reference_recipe(init: str, root: Path, num_classes: int, steps: int, batch_size: int, crop: int, seed: int = 0):
    """The reference recipe (module docstring) for ``steps`` steps of ``batch_size``; the network."""
    torch.manual_seed(seed)
    _, meta = load_model(init)
    model = ReferenceDeepLab(num_classes, meta.builder_args)
    load_backbone_weights(model.backbone, init)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return train_steps(
        model,
        _ReferenceTrainSet(root, crop),
        batch_size=batch_size,
        steps=steps,
        optimizer=optimizer,
        scheduler=lambda loader: torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=steps, power=0.9),
        loss=lambda logits, masks: F.cross_entropy(logits, masks, ignore_index=255),
        seed=seed,
    )


def _miou(model: nn.Module, val: VOCSegmentation, pad: int, reference: bool) -> float:
    """mIoU on the validation split through this project's pipeline (each photo at its own size,
    padded to ``pad``), the reference network run in place of the preset's."""
    stand_in = model if not reference else deeplabv3_mobilenet_v2(num_classes=val.num_classes)
    meta = describe("segmentation", stand_in, {"pad_to": pad}, class_names=list(val.class_names))
    if not reference:
        return SegmentationPipeline(meta, model.eval()).evaluate(val)["mIoU"]
    with torch.no_grad():
        return SegmentationPipeline(meta, runner=lambda batch: (model(batch),)).evaluate(val)["mIoU"]


def compare_recipes(
    root: Path,
    init: str,
    num_classes: int,
    steps: int,
    crop: int,
    output_dir: Path,
    seeds: int = 1,
    preset_overrides: Sequence[str] = (),
) -> tuple[list[tuple[str, list[float], float]], int, int]:
    """``([(recipe, mIoU per seed, training seconds per seed), ...], batch size, evaluation pad)``
    for the reference recipe and the fine-tuning preset, ``steps`` steps of the preset's batch each;
    ``preset_overrides`` change the preset (to measure a variant of it)."""
    from tasks.runner import train_model  # noqa: PLC0415

    common = [
        f"data.root={root}",
        f"data.num_classes={num_classes}",
        f"data.image_size={crop}",
        f"init_from={init}",
        f"trainer.max_steps={steps}",
    ]
    preset = [PRESET, *preset_overrides]
    composed = compose_config("train", [*preset, *common], output_dir / "composed")
    batch, pad = int(composed.data.batch_size), int(composed.data.eval_pad_size)
    val = VOCSegmentation(root, "val", num_classes)
    scores: dict[str, list[float]] = {REFERENCE: [], PRESET: []}
    seconds = {REFERENCE: 0.0, PRESET: 0.0}
    for seed in range(seeds):
        start = time.perf_counter()
        model = reference_recipe(init, root, num_classes, steps, batch, crop, seed=seed)
        seconds[REFERENCE] += time.perf_counter() - start
        scores[REFERENCE].append(score_measured(REFERENCE, seed, _miou(model, val, pad, reference=True)))
        start = time.perf_counter()
        model = train_model([*preset, *common, f"seed={seed}"], output_dir / f"preset_seed{seed}")
        seconds[PRESET] += time.perf_counter() - start
        scores[PRESET].append(score_measured(PRESET, seed, _miou(model, val, pad, reference=False)))
    rows = [(REFERENCE, scores[REFERENCE], seconds[REFERENCE] / seeds)]
    return [*rows, (" ".join(preset), scores[PRESET], seconds[PRESET] / seeds)], batch, pad


def report(rows, root: Path, init: str, steps: int, batch: int, crop: int, pad: int, command: str) -> str:
    train = len((root / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    val = len((root / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    seeds = len(rows[0][1])
    return recipes_report(
        f"Segmentation fine-tuning: preset against torchvision's segmentation reference, {steps} steps of {batch}",
        command,
        f"Photos: {train} training / {val} validation ({root.name}); both recipes start from "
        f"`{Path(init).name}`, train {steps} steps of {batch} crops of {crop} ({steps * batch} crops seen) "
        f"and are scored by the same pipeline (each validation photo at its own size, padded to {pad}); "
        f"{seeds} seed(s): mean ± standard deviation (lowest-highest).",
        rows,
        "mIoU",
    )


def main(argv: list[str] | None = None) -> int:
    parser = recipes_argument_parser(__doc__)
    parser.add_argument("--init", required=True, help="checkpoint both recipes start from")
    parser.add_argument("--root", required=True, help="photos in the VOC layout")
    parser.add_argument("--classes", type=int, help="classes with the background (default: class_names.txt)")
    parser.add_argument("--crop", type=int, default=321, help="training crop size of both recipes")
    parser.add_argument("--output", default="outputs/benchmarks/finetune_segmentation")
    args = parser.parse_args(argv)
    root = Path(args.root)
    names = root / "class_names.txt"
    if args.classes is None and not names.is_file():
        parser.error(f"give --classes: {names} does not exist")
    classes = args.classes or len(names.read_text().split())
    rows, batch, pad = compare_recipes(
        root, args.init, classes, args.steps, args.crop, Path(args.output), args.seeds, args.preset_override
    )
    text = report(rows, root, args.init, args.steps, batch, args.crop, pad, command_line(__file__, argv))
    publish(
        text,
        "finetune_segmentation",
        update_docs=args.update_docs,
        docs=args.docs,
        report_file=Path(args.output) / "finetune_segmentation.md",
    )
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
