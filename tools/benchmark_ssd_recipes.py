"""SSDLite's two training recipes side by side, same data, same epochs, one run: today's
(torchvision's softmax loss with 3:1 mining per image, clipped anchors, SSD's augmentation) and TF's
ssdlite_mobilenet_v2_coco (sigmoid loss, TF's hard example miner, TF's anchors, flip + SSD random
crop, RMSProp):

    python tools/benchmark_ssd_recipes.py --epochs 6 [--update-docs]          # the generated COCO set
    python tools/benchmark_ssd_recipes.py --voc-annotations ../shared/data/kangaroo/annots \\
        --images ../shared/data/kangaroo/images --init mnv2.ckpt --epochs 10 [--update-docs]

With --voc-annotations the photos (Pascal VOC XML) are split, every 5th to validation, and both
recipes fine-tune from --init (a checkpoint with ImageNet weights, e.g. Google's classifier converted
by tools/convert.py) with the fine-tuning presets."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.cli import run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each recipe")
    parser.add_argument("--voc-annotations", help="VOC XML folder of a real detection set (else the generated set)")
    parser.add_argument("--images", help="the detection set's images")
    parser.add_argument("--init", help="checkpoint both fine-tunes start from (with --voc-annotations)")
    parser.add_argument("--output", default="outputs/benchmark_ssd_recipes")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--docs", default="docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.voc_annotations and not (args.images and args.init):
        parser.error("--voc-annotations needs --images and --init")

    from tasks.ssd_recipe_check import compare_recipes, kangaroo_split, report  # noqa: PLC0415
    from vision_mnv2.reports import command_line, write_report, write_section  # noqa: PLC0415

    output = Path(args.output)
    if args.voc_annotations:
        root = output / "data"
        counts = kangaroo_split(Path(args.voc_annotations), Path(args.images), root)
        data, name = "custom", Path(args.images).resolve().parent.name
        common = [
            f"data.root={root.resolve()}",
            "data.num_classes=1",
            "data.train_images=images",
            "data.train_annotations=train.json",
            "data.val_images=images",
            "data.val_annotations=val.json",
            f"init_from={Path(args.init).resolve()}",
            "data.skip_bad=true",  # real photos: a truncated one is left out (logged) in both recipes
        ]
        title = f"fine-tuned on the {name} photos, {args.epochs} epochs"
        setup = (
            f"Photos: {counts['train']} training / {counts['val']} validation ({name}, every 5th to "
            f"validation), 320x320; both start from `{Path(args.init).name}`."
        )
    else:
        data, name, common = "generated", "generated", []
        title = f"generated COCO set, {args.epochs} epochs from scratch"
        setup = "Data: `task=ssdlite`'s generated set (800 training / 200 validation images, 6 classes), 192x192."
    rows = compare_recipes(data, common, args.epochs, (output / name).resolve())
    text = report(rows, title, setup, command_line("benchmark_ssd_recipes.py", argv))
    print(text)
    write_report(output / name / "benchmark_ssd_recipes.md", text)
    if args.update_docs:
        write_section(Path(args.docs), f"ssd_recipes_{data}", text)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
