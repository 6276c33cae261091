"""``tools/benchmark_ssd_recipes.py``: SSDLite trained with today's recipe (torchvision's softmax loss
with per-image 3:1 mining, clipped anchors, SSD's full augmentation) against TF's
``ssdlite_mobilenet_v2_coco`` recipe, on the same data, for the same epochs, scored the same way
(COCOeval on the validation split after the last epoch), in one run: both train at once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from vision_mnv2.data.voc_xml import voc_xml_to_coco, write_coco_json

__all__ = ["RECIPES", "compare_recipes", "kangaroo_split", "recipe_threads", "report"]

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


def kangaroo_split(annotations: Path, images: Path, root: Path, every: int = 5) -> dict[str, int]:
    """A VOC XML detection set as ``root/{train,val}.json`` + ``root/images`` (a link): every
    ``every``-th photo (sorted by name) to validation. Returns the image counts."""
    stems = sorted(p.stem for p in Path(annotations).glob("*.xml"))
    if not stems:
        raise FileNotFoundError(f"no VOC XML files in {str(annotations)!r}")
    val = stems[::every]
    train = [s for s in stems if s not in set(val)]
    root.mkdir(parents=True, exist_ok=True)
    link = root / "images"
    if not link.exists():
        link.symlink_to(Path(images).resolve())
    counts = {}
    for split, ids in (("train", train), ("val", val)):
        write_coco_json(voc_xml_to_coco(annotations, images, ids=ids), root / f"{split}.json")
        counts[split] = len(ids)
    return counts


def compare_recipes(data: str, common: list[str], epochs: int, output_dir: Path) -> list[dict]:
    """Train each recipe of ``RECIPES[data]`` for ``epochs`` with the ``common`` overrides and
    evaluate once, after the last epoch. The recipes train at the same time, each in its own
    ``tools/train.py`` process, so that both see the same load of a shared machine. The cores are
    shared out between them: two processes each running a thread per core spin against each other
    (on 2 cores an epoch of the generated set took 350 s instead of about 60 s)."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "train.py"
    threads = recipe_threads(len(RECIPES[data]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch's intra-op threads in each process
    runs = []
    for name, overrides in RECIPES[data]:
        folder = output_dir / overrides[0].split("=")[1]
        command = [sys.executable, str(tool), *overrides, *common]
        command += [
            f"trainer.max_epochs={epochs}",
            f"trainer.check_val_every_n_epoch={epochs}",  # one evaluation, after the last epoch
            "logger=none",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={folder}",
        ]
        folder.mkdir(parents=True, exist_ok=True)
        log = (folder / "train.log").open("w")
        runs.append(
            (
                name,
                folder,
                time.perf_counter(),
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
            )
        )
    rows = []
    for name, folder, start, process in runs:
        if process.wait() != 0:
            raise RuntimeError(f"{name} failed (exit {process.returncode}); see {folder / 'train.log'}")
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
    lines = [
        f"### SSDLite training recipes: today's against TF's ssdlite_mobilenet_v2_coco, {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{rows[0]['threads']} thread(s) per recipe; "
        f"{time.strftime('%Y-%m-%d')}. {setup}",
        "",
        "| recipe | COCO mAP@[.5:.95] | mAP@.5 | wall time (both at once), s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['recipe']} | {r['mAP']:.4f} | {r['mAP_50']:.4f} | {r['seconds']:.0f} |" for r in rows]
    ratio = f"{tf / today:.2f}" if today > 0 else "n/a (today's mAP is 0)"
    lines += ["", f"TF's / today's mAP: **{ratio}**; {better} recipe trains better here."]
    return "\n".join(lines) + "\n"
