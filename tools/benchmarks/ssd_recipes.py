"""SSDLite's two training recipes side by side, same data, same epochs, one run: today's
(torchvision's softmax loss with 3:1 mining per image, clipped anchors, SSD's augmentation) and TF's
ssdlite_mobilenet_v2_coco (sigmoid loss, TF's hard example miner, TF's anchors, flip + SSD random
crop, RMSProp):

    python tools/benchmarks/ssd_recipes.py --epochs 6 [--update-docs]          # the generated COCO set
    python tools/benchmarks/ssd_recipes.py --voc-annotations ../shared/data/kangaroo/annots \\
        --images ../shared/data/kangaroo/images --init mnv2.ckpt --epochs 10 [--update-docs]

With --voc-annotations the photos (Pascal VOC XML) are split, every 5th to validation, and both
recipes fine-tune from --init (a checkpoint with ImageNet weights, e.g. Google's classifier converted
by tools/convert.py) with the fine-tuning presets.

Both recipes train at once, so that both see the same load of a shared machine, and are scored
the same way: COCOeval on the validation split after the last epoch."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the tools package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.cli import compose_config, run_tool
from tools.benchmarks.finetune_detection import split_voc_set
from vision_mnv2.reports import argument_parser, command_line, publish, report_header

__all__ = ["RECIPES", "compare_recipes", "recipe_threads", "report"]

# (name, overrides) per data set: today's recipe first, TF's second.
RECIPES = {
    "generated": (
        ("today's: task=ssdlite", ["task=ssdlite"]),
        ("TF's: experiment=ssdlite_tf", ["experiment=ssdlite_tf"]),
    ),
    "custom": (
        ("today's: experiment=finetune_ssdlite_custom", ["experiment=finetune_ssdlite_custom"]),
        ("TF's: experiment=finetune_ssdlite_custom_tf", ["experiment=finetune_ssdlite_custom_tf"]),
    ),
}


def _train(overrides: list[str], folder: Path, threads: int) -> None:
    """One recipe's training in a process of its own: the configuration ``tools/train.py`` composes
    from ``overrides``, run in ``folder``, its output in ``folder/train.log``."""
    log = os.open(folder / "train.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    import torch  # noqa: PLC0415

    from tasks.runner import train  # noqa: PLC0415

    torch.set_num_threads(threads)

    train(compose_config("train", overrides, folder))


def compare_recipes(data: str, common: list[str], epochs: int, output_dir: Path) -> list[dict]:
    """Train each recipe of ``RECIPES[data]`` for ``epochs`` with the ``common`` overrides and
    evaluate once, after the last epoch. The recipes train at the same time, each in a process of
    its own, so that both see the same load of a shared machine. The cores are shared out between
    them: two processes each running a thread per core spin against each other."""
    threads = recipe_threads(len(RECIPES[data]))
    # Started afresh (spawn), not forked: the parent may hold thread pools a fork would copy locked.
    context = multiprocessing.get_context("spawn")
    runs = []
    for name, overrides in RECIPES[data]:
        folder = output_dir / overrides[0].split("=")[1]
        folder.mkdir(parents=True, exist_ok=True)
        settings = [*overrides, *common]
        settings += [
            f"trainer.max_epochs={epochs}",
            f"trainer.check_val_every_n_epoch={epochs}",  # one evaluation, after the last epoch
            "logger=none",
            "callbacks.progress_bar=null",
        ]
        process = context.Process(target=_train, args=(settings, folder, threads), name=name)
        process.start()
        runs.append((name, folder, time.perf_counter(), process))
    rows = []
    for name, folder, start, process in runs:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"{name} failed (exit {process.exitcode}); see {folder / 'train.log'}")
        metrics = json.loads((folder / "train_metrics.json").read_text())["metrics"]
        rows.append(
            {
                "recipe": name,
                "mAP": metrics["val/mAP"],
                "mAP_50": metrics["val/mAP_50"],
                "seconds": time.perf_counter() - start,
                "threads": threads,
            }
        )
    return rows


def recipe_threads(recipes: int, cores: int | None = None) -> int:
    """Torch threads for each of ``recipes`` processes training at once: the cores shared out."""
    return max(1, (cores or os.cpu_count() or 1) // recipes)


def report(rows: list[dict], title: str, setup: str, command: str) -> str:
    today, tf = rows[0]["mAP"], rows[1]["mAP"]
    better = "TF's" if tf > today else "today's"
    lines = report_header(
        f"SSDLite training recipes: today's against TF's ssdlite_mobilenet_v2_coco, {title}",
        command,
        setup,
        f"{rows[0]['threads']} thread(s) per recipe",
    )
    lines += [
        "| recipe | COCO mAP@[.5:.95] | mAP@.5 | wall time (both at once), s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['recipe']} | {r['mAP']:.4f} | {r['mAP_50']:.4f} | {r['seconds']:.0f} |" for r in rows]
    ratio = f"{tf / today:.2f}" if today > 0 else "n/a (today's mAP is 0)"
    lines += ["", f"TF's / today's mAP: **{ratio}**; {better} recipe trains better here."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each recipe")
    parser.add_argument("--voc-annotations", help="VOC XML folder of a real detection set (else the generated set)")
    parser.add_argument("--images", help="the detection set's images")
    parser.add_argument("--init", help="checkpoint both fine-tunes start from (with --voc-annotations)")
    parser.add_argument("--output", default="outputs/benchmarks/ssd_recipes")
    args = parser.parse_args(argv)
    if args.voc_annotations and not (args.images and args.init):
        parser.error("--voc-annotations needs --images and --init")

    output = Path(args.output)
    if args.voc_annotations:
        root = output / "data"
        # The split the fine-tuning benchmark uses (finetune_detection.py): every 5th photo validates.
        counts = split_voc_set(Path(args.voc_annotations), Path(args.images), root)
        data, name = "custom", Path(args.images).resolve().parent.name
        common = [
            f"data.root={root.resolve()}",
            f"data.num_classes={counts['classes']}",
            "data.train_images=train_images",
            "data.train_annotations=train.json",
            "data.val_images=val_images",
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
    text = report(rows, title, setup, command_line(__file__, argv))
    publish(
        text,
        f"ssd_recipes_{data}",
        update_docs=args.update_docs,
        docs=args.docs,
        report_file=output / name / "ssd_recipes.md",
    )
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
