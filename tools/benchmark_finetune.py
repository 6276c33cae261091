"""Fine-tuning a classifier on real photos: this project's preset against torchvision's transfer-
learning tutorial recipe, same weights, same steps, same photos, one run:

    python tools/benchmark_finetune.py --init mnv2.ckpt --voc-annotations ../shared/data/kangaroo/annots \\
        --images ../shared/data/kangaroo/images [--steps 150] [--update-docs]

The photos: a folder in the ImageNet layout (--folder), or a detection set in Pascal VOC XML cut
into object and background crops (--voc-annotations, --images). --init: a checkpoint with ImageNet
weights (e.g. Google's classifier converted by tools/convert.py)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tasks.cli import run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="checkpoint every recipe starts from")
    parser.add_argument("--folder", help="photos in the ImageNet layout: train/<class>/, val/<class>/")
    parser.add_argument("--voc-annotations", help="VOC XML folder of a detection set, cut into a 2-class set")
    parser.add_argument("--images", help="the detection set's images")
    parser.add_argument("--train-images", type=int, default=60, help="photos of the detection set for training")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--output", default="outputs/benchmark_finetune")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--docs", default="docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not args.folder and not (args.voc_annotations and args.images):
        parser.error("give --folder, or --voc-annotations and --images")

    from hydra import compose, initialize_config_dir  # noqa: PLC0415
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415

    from tasks.finetune_check import compare_recipes, report  # noqa: PLC0415
    from vision_mnv2.data.crops import write_object_background_crops  # noqa: PLC0415
    from vision_mnv2.data.voc_xml import voc_xml_to_coco  # noqa: PLC0415
    from vision_mnv2.reports import command_line, write_report, write_section  # noqa: PLC0415

    output = Path(args.output)
    root = (
        Path(args.folder)
        if args.folder
        else Path(tempfile.mkdtemp(prefix="crops_", dir=output.parent if output.parent.is_dir() else None))
    )
    if not args.folder:
        coco = voc_xml_to_coco(args.voc_annotations, args.images)
        write_object_background_crops(coco, args.images, root, args.train_images)
    configs = str(Path(__file__).resolve().parents[1] / "configs")

    def compose_train(overrides: list[str], folder: Path):
        with initialize_config_dir(config_dir=configs, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        from omegaconf import open_dict  # noqa: PLC0415

        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(folder)
        return cfg

    rows = compare_recipes(root, args.init, args.steps, output, compose_train)
    text = report(rows, root, args.init, args.steps, command_line("benchmark_finetune.py", argv))
    print(text)
    write_report(output / "benchmark_finetune.md", text)
    if args.update_docs:
        write_section(Path(args.docs), "finetune_classification", text)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
