"""The README as a test plan: its commands, and a user's world to run them in.

:func:`readme_commands` reads every ``bash`` block of README.md (continuation lines joined, comments
dropped, an optional ``[...]`` part run both without and with it) and every ``python`` block.
:class:`UserWorld` is a fresh home folder and working folder holding what the commands name: tiny
datasets in the real layouts at the paths the README uses (``/data/imagenet``, ``/data/coco``,
``/data/VOCdevkit/VOC2012``, ``/data/mine``, ``mine``), photos, torchvision-layout ImageNet weight
files in torch hub's cache, Google-style TFLite files. It turns a README command into the command
that runs: the same tool and arguments, placeholders (``<run>``, ``...``) filled with what earlier
commands produced, and only size overrides appended (dataset size, image size, batch size, epochs,
batches per epoch, loader workers, and one CPU instead of a GPU cluster). The tests then run it
through the real command line.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from hydra import compose, initialize_config_dir
from PIL import Image

from vision_mnv2.data import write_classification_dataset, write_detection_dataset, write_segmentation_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
CONFIG_DIR = REPO_ROOT / "configs"
# The README and its pages, in the order a reader goes through them (training before using models).
DOC_PAGES = ("running", "classification", "detection", "segmentation", "fine-tuning", "google-models",
             "deployment", "architecture", "testing")  # fmt: skip


def documentation() -> list[Path]:
    """README.md and every page of docs/ (pages not in DOC_PAGES after them, in name order)."""
    pages = [REPO_ROOT / "docs" / f"{name}.md" for name in DOC_PAGES]
    others = sorted(p for p in (REPO_ROOT / "docs").glob("*.md") if p not in pages)
    return [README, *[p for p in pages if p.is_file()], *others]


# The checkpoint each task's ``ckpt_path=...`` stands for: the run of the README's own command
# ``python tools/train.py task=<name>`` (outputs/<task_name>/<run>/checkpoints/last.ckpt).
TASK_RUNS = {"classification": "classification", "detection": "ssdlite", "segmentation": "deeplabv3"}
TASKS = tuple(TASK_RUNS)
# torch hub's file names of torchvision's MobileNetV2 ImageNet weights.
TORCHVISION_FILES = {"IMAGENET1K_V1": "mobilenet_v2-b0353104.pth", "IMAGENET1K_V2": "mobilenet_v2-7ebf99e0.pth"}

# The world's datasets: classes (without background for segmentation) and sizes.
SEGMENTATION_SIZE = (96, 128)
DETECTION_SIZE = (96, 128)
# Classes of Google's iNaturalist birds classifier (its background the last).
INAT_BIRDS = 965


@dataclass
class Command:
    """One command of the documentation: where it is, its text, its words; ``task`` is set for
    ``ckpt_path=...`` commands, run once per task."""

    line: int
    text: str
    words: list[str]
    task: str | None = None
    source: str = "README.md"

    @property
    def id(self) -> str:
        text = re.sub(r"\s+", " ", self.text)
        return f"{self.source}:{self.line} {text}" + (f" [{self.task}]" if self.task else "")

    @property
    def tool(self) -> str:
        return self.words[1] if self.words[0] == "python" else f"make {self.words[1]}"

    def value(self, key: str) -> str | None:
        found = [w.split("=", 1)[1] for w in self.words if w.split("=", 1)[0].lstrip("+") == key]
        return found[-1] if found else None


@dataclass
class Snippet:
    """One ``python`` block of the documentation."""

    line: int
    code: str
    source: str = "README.md"

    @property
    def id(self) -> str:
        return f"{self.source}:{self.line} python block"


def _blocks(text: str, language: str) -> list[tuple[int, list[str]]]:
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if current is None and line.strip() == f"```{language}":
            current, start = [], number + 1
        elif current is not None and line.strip() == "```":
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _optional_variants(words: list[str]) -> list[list[str]]:
    """``a [b c] d`` -> ``a d`` and ``a b c d``."""
    joined = " ".join(words)
    match = re.search(r"\[([^\[\]=]*?(?:=[^\[\]]*)?)\]", joined)
    if not match or not (match.group(0).startswith("[-") or match.group(0).startswith("[export")):
        return [words]
    without = (joined[: match.start()] + joined[match.end() :]).split()
    with_ = (joined[: match.start()] + match.group(1) + joined[match.end() :]).split()
    return [without, with_]


def _source(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def readme_commands(paths: list[Path] | None = None) -> list[Command]:
    """Every command line of the ``bash`` blocks of the README and the docs pages, in order; a
    command written twice (the README's tour repeats some) is run where it first appears."""
    commands, seen = [], set()
    for path in paths or documentation():
        for start, lines in _blocks(path.read_text(), "bash"):
            index = 0
            while index < len(lines):
                number, text = start + index, lines[index]
                while text.rstrip().endswith("\\") and index + 1 < len(lines):
                    index += 1
                    text = text.rstrip()[:-1] + " " + lines[index].strip()
                index += 1
                words = shlex.split(text, comments=True)
                for variant in _optional_variants(words) if words else []:
                    if tuple(variant) not in seen:
                        seen.add(tuple(variant))
                        commands.append(
                            Command(number, " ".join(shlex.quote(w) for w in variant), variant, source=_source(path))
                        )
    return commands


def readme_snippets(paths: list[Path] | None = None) -> list[Snippet]:
    return [
        Snippet(start, "\n".join(lines), _source(path))
        for path in paths or documentation()
        for start, lines in _blocks(path.read_text(), "python")
    ]


def tasks_of(command: Command) -> list[str | None]:
    """The tasks a command runs for: ``ckpt_path=...`` stands for each task's checkpoint, unless the
    rest of the command says which task it is."""
    if command.value("ckpt_path") != "...":
        return [None]
    text = command.text
    if "ImageSets/Segmentation" in text or "module.eval_scales" in text:
        return ["segmentation"]
    if re.search(r"annotations/\S+\.json", text):
        return ["detection"]
    return list(TASKS)


def same_work(command: Command) -> tuple[str, ...]:
    """What a command does, with the checkpoint named by task: the tour's
    ``ckpt_path=outputs/ssdlite/<run>/...`` is the pages' ``ckpt_path=...`` for detection."""
    runs = {run: task for task, run in TASK_RUNS.items()}
    words = []
    for word in command.words:
        key, _, value = word.partition("=")
        match = re.fullmatch(r"outputs/(\w+)/<run>/checkpoints/last\.ckpt", value)
        if key == "ckpt_path" and (value == "..." or (match and match[1] in runs)):
            word = f"ckpt_path=<{command.task or runs[match[1]]}>"
        words.append(word)
    return tuple(words)


def expanded_commands(paths: list[Path] | None = None) -> list[Command]:
    """The commands to run: ``ckpt_path=...`` once per task, and work written twice run once."""
    out, seen = [], set()
    for command in readme_commands(paths):
        for task in tasks_of(command):
            expanded = copy.copy(command)
            expanded.task = task
            if same_work(expanded) not in seen:
                seen.add(same_work(expanded))
                out.append(expanded)
    return out


# --------------------------------------------------------------------------------------------------
# The world


def _voc_xml(file_name: str, width: int, height: int, objects: list[tuple[str, list[float]]]) -> str:
    """A LabelImg-style Pascal VOC annotation (1-based inclusive corners)."""
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{round(x) + 1}</xmin>"
        f"<ymin>{round(y) + 1}</ymin><xmax>{round(x + w)}</xmax><ymax>{round(y + h)}</ymax></bndbox></object>"
        for name, (x, y, w, h) in objects
    )
    return (
        f"<annotation><folder>images</folder><filename>{file_name}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{body}</annotation>"
    )


def _tiny_overrides(cfg, tool_keys: set[str]) -> list[str]:
    """Size overrides that make a training config run in seconds, decided from its composed values."""
    out = ["trainer.max_epochs=1", "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1"]
    out.append("trainer.log_every_n_steps=1")
    trainer = cfg.trainer
    if trainer.get("max_steps", -1) not in (-1, None):
        out.append("trainer.max_steps=2")  # a budget of two 1-batch epochs
    if (
        str(trainer.get("accelerator")) not in ("cpu", "auto")
        or int(trainer.get("devices", 1)) != 1
        or int(trainer.get("num_nodes", 1)) != 1
    ):
        # The cluster recipes, on this machine's CPU.
        out += [
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "++trainer.num_nodes=1",
            "++trainer.strategy=auto",
            "++trainer.sync_batchnorm=false",
            "trainer.precision=32-true",
        ]
    data = cfg.data
    if int(data.get("batch_size", 4)) > 4:
        out.append("data.batch_size=4")
    if int(data.get("num_workers", 0)) > 2:
        out.append("data.num_workers=2")
    target = str(data.get("_target_", ""))
    size = int(data.get("image_size") or 0)
    if "ClassificationDataModule" in target and size > 96 and "data.image_size" not in tool_keys:
        out.append("data.image_size=96")
    if "DetectionDataModule" in target and size > 128 and "data.image_size" not in tool_keys:
        out.append("data.image_size=128")
    if "SegmentationDataModule" in target:
        if size > 96:
            out.append("data.image_size=96")
        if data.get("eval_pad_size"):
            out.append(f"data.eval_pad_size={max(SEGMENTATION_SIZE)}")
    generate = data.get("generate")
    if generate:
        if "ClassificationDataModule" in target:
            out += ["data.generate.train_per_class=2", "data.generate.val_per_class=1", "data.generate.image_size=64"]
        else:
            height, width = SEGMENTATION_SIZE
            out += ["data.generate.train_images=8", "data.generate.val_images=4"]
            out.append(f"data.generate.image_size=[{height},{width}]")
    return out


@dataclass
class Outcome:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    new_outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        return (
            f"$ {' '.join(shlex.quote(w) for w in self.command)}\nexit {self.returncode}\n"
            f"--- stdout (end)\n{self.stdout[-3000:]}\n--- stderr (end)\n{self.stderr[-6000:]}"
        )


class UserWorld:
    """A user's home and working folder where the README's commands run, in order."""

    def __init__(self, root: Path, server) -> None:
        self.root = root
        self.home = root / "home"
        self.cwd = root / "work"
        self.data = root / "data"
        self.server = server
        self.done: dict[str, Outcome] = {}
        self.blocks_done: dict = {}  # the python blocks run here (test_readme.py), by id: (code, outcome)
        self.cwd.mkdir(parents=True)
        # The repository's tools and configs, as in a clone (the tools find ../configs beside them).
        for name in ("tools", "configs"):
            (self.cwd / name).symlink_to(REPO_ROOT / name)
        self._make_home()
        self._make_photos()

    # -- the environment ------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VISION_MNV2_", "TORCH_HOME", "PYTEST_"))}
        env["HOME"] = str(self.home)  # torch hub's cache and the project's generated data live here
        env.pop("XDG_CACHE_HOME", None)
        return env

    def _make_home(self) -> None:
        hub = self.home / ".cache" / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.manual_seed(0)
        state = torchvision.models.mobilenet_v2().state_dict()  # torchvision's layout, random weights
        for file_name in TORCHVISION_FILES.values():
            torch.save(state, hub / file_name)
        self.imagenet_file = hub / TORCHVISION_FILES["IMAGENET1K_V1"]

    def _make_photos(self) -> None:
        """Photos of several sizes and formats, as a user's folder holds them."""
        scenes = write_detection_dataset(
            self.root / "scenes", num_classes=3, train_images=1, val_images=4, image_size=(240, 320), seed=11
        )
        files = sorted((scenes / "val2017").glob("*.jpg"))
        folder = self.cwd / "photos"
        folder.mkdir()
        sizes = [(320, 240), (500, 375), (64, 48), (300, 520)]
        for index, (file, size) in enumerate(zip(files, sizes)):
            with Image.open(file) as image:
                photo = image.convert("RGB").resize(size, Image.BILINEAR)
            photo.save(folder / (f"photo_{index}.png" if index == 2 else f"photo_{index}.jpg"), quality=90)
        shutil.copy(folder / "photo_0.jpg", self.cwd / "photo.jpg")

    # -- datasets at the README's paths ---------------------------------------------------------

    def _ensure_public_data(self) -> None:
        if (self.data / "imagenet").exists():
            return
        write_classification_dataset(
            self.data / "imagenet", num_classes=4, train_per_class=3, val_per_class=2, image_size=64, seed=1
        )
        write_detection_dataset(self.data / "coco", num_classes=3, train_images=8, val_images=4, image_size=DETECTION_SIZE, seed=2)  # fmt: skip
        voc = write_segmentation_dataset(
            self.data / "VOCdevkit" / "VOC2012", num_classes=3, train_images=8, val_images=4,
            image_size=SEGMENTATION_SIZE, seed=3,
        )  # fmt: skip
        # SBD's augmented training set, as experiment=deeplabv3_voc reads it.
        lists = voc / "ImageSets" / "Segmentation"
        shutil.copy(lists / "train.txt", lists / "train_aug.txt")
        shutil.copytree(voc / "SegmentationClass", voc / "SegmentationClassAug")
        (self.data / "VOC2012").symlink_to(voc)

    # Classes the world's public sets have, which the configs of the real sets (1000, 80, 21) exceed.
    PUBLIC_CLASSES = {"imagenet": 4, "coco": 3, "VOCdevkit": 4, "VOC2012": 4}

    def _prepare_mine(self, kind: str, folder: Path, num_classes: int) -> None:
        """The user's own data, in the layout the command names. The README names one ``mine`` for
        each task's example; the world keeps one per task (``mine_<task>``), as a user would."""
        if folder.exists():
            return
        if kind == "classification":
            write_classification_dataset(folder, num_classes=num_classes, train_per_class=4, val_per_class=2, image_size=64, seed=4)  # fmt: skip
        elif kind == "segmentation":
            write_segmentation_dataset(
                folder, num_classes=num_classes - 1, train_images=8, val_images=4, image_size=SEGMENTATION_SIZE, seed=5
            )
        else:
            self._detection_mine(folder, num_classes)

    def _detection_mine(self, folder: Path, num_classes: int) -> None:
        """Photos labelled in Pascal VOC XML (as LabelImg saves them), split lists, and the COCO files
        the README's training command reads (images/, images/train, images/val, train.json, val.json)."""
        from vision_mnv2.data.voc_xml import voc_xml_to_coco, write_coco_json

        coco = write_detection_dataset(
            self.root / f"coco_mine_{num_classes}", num_classes=num_classes, train_images=8, val_images=4,
            image_size=DETECTION_SIZE, seed=6,
        )  # fmt: skip
        for sub in ("annots", "images", "images/train", "images/val"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            annotations = json.loads((coco / "annotations" / f"instances_{split}2017.json").read_text())
            names = {c["id"]: c["name"] for c in annotations["categories"]}
            ids = []
            for image in annotations["images"]:
                stem = Path(image["file_name"]).stem
                ids.append(stem)
                for target in (folder / "images", folder / "images" / split):
                    shutil.copy(coco / f"{split}2017" / image["file_name"], target / image["file_name"])
                objects = [(names[a["category_id"]], a["bbox"]) for a in annotations["annotations"] if a["image_id"] == image["id"]]  # fmt: skip
                xml = _voc_xml(image["file_name"], image["width"], image["height"], objects)
                (folder / "annots" / f"{stem}.xml").write_text(xml)
            (folder / f"{split}.txt").write_text("\n".join(ids) + "\n")
            classes = [names[k] for k in sorted(names)]
            dataset = voc_xml_to_coco(folder / "annots", folder / "images", classes, ids)
            write_coco_json(dataset, folder / f"{split}.json")

    def _make_tflite(self, words: list[str]) -> None:
        """Google-style TFLite files under the names the README gives, generated (tests/tflite_models.py)."""
        from . import tflite_models

        for word in words:
            target = self.cwd / word
            if target.exists():
                continue
            # Google's graphs at a small width and input size: the converter reads any (the files'
            # names do not decide what they hold), and these convert and run in seconds.
            # The family is that of Google's file of this name (docs/google-models.md).
            if word.endswith(".tflite") and "deeplab" in word:
                tflite_models.deeplab_v3_mobilenet_v2(target, width=0.5, size=129, quantized=True)
            elif word.endswith(".tflite") and "mobilenet_v1" in word:
                tflite_models.tf_slim_mobilenet_v1_classifier(target, width=0.25, size=96)
            elif word.endswith(".tflite") and "tf2" in word:  # 1001 outputs, as Google's Keras file
                tflite_models.keras_mobilenet_v2_classifier(target, width=0.35, size=96, num_classes=1001)
            elif word.endswith(".tflite") and "inat" in word:
                tflite_models.tf_slim_mobilenet_v2_classifier(target, width=0.35, size=96, num_classes=INAT_BIRDS, logits="fully_connected")  # fmt: skip
            elif word.endswith(".tflite"):
                tflite_models.tf_slim_mobilenet_v2_classifier(target, width=0.35, size=96, quantized=True)
            elif word == "imagenet_labels.txt":
                tflite_models.write_imagenet_labels(target)
            elif word == "inat_bird_labels.txt":  # the background the last, as Google's
                target.write_text("\n".join([f"species {i}" for i in range(INAT_BIRDS - 1)] + ["background"]) + "\n")
            elif word == "pascal_voc_segmentation_labels.txt":
                tflite_models.write_voc_labels(target)

    # -- from a README command to the command that runs ------------------------------------------

    def _mine_kind_of(self, command: Command) -> str | None:
        text = command.text
        if "finetune_classification_custom" in text or "data=imagenet_custom" in text:
            return "classification"
        if "finetune_deeplabv3_custom" in text or "data=voc_custom" in text:
            return "segmentation"
        if "finetune_ssdlite_custom" in text or "data=coco_custom" in text or "voc_to_coco" in text:
            return "detection"
        return None

    def newest(self, pattern: str) -> Path | None:
        found = sorted(self.cwd.glob(pattern), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def resolve(self, command: Command, earlier: list[Command]) -> list[str]:
        """The words that run: placeholders filled, paths moved into the world, size overrides added.
        Placeholders that name what an earlier command makes run that command first (once)."""
        words = list(command.words)
        kind = self._mine_kind_of(command)
        classes = int(command.value("data.num_classes") or 1)
        out = []
        for word in words:
            key, _, value = word.partition("=")
            if kind and re.search(r"(^|=|/)mine(/|$)", word):
                word = re.sub(r"(^|=|/)mine(/|$)", rf"\1mine_{kind}\2", word, count=1)
                value = word.partition("=")[2]
                mine = Path(re.sub(r"^.*?(\S*mine_\w+).*$", r"\1", value or word))
                if str(mine).startswith("/data/"):
                    mine = self.data / mine.relative_to("/data")
                self._prepare_mine(kind, mine if mine.is_absolute() else self.cwd / mine, classes)
            if word.startswith("/data/") or value.startswith("/data/"):
                self._ensure_public_data()
                word = word.replace("/data/", f"{self.data}/", 1)
                value = word.partition("=")[2]
            if value == "...":
                word = f"{key}={self._ellipsis(key, command, earlier)}"
            elif "<run>" in word or "<date_time>" in word:
                word = self._produced(word, command, earlier)
            elif key in ("init_from",) and value in TORCHVISION_FILES:
                pass  # read from torch hub's cache in the world's home
            elif key in ("ckpt_path", "init_from") and value and not (self.cwd / value).exists():
                self._make_file(value, earlier)  # a file an earlier command writes (--output mnv2.ckpt)
            out.append(word)
        if command.tool.endswith(".tflite") or command.words[:2] == ["python", "tools/convert.py"]:
            self._make_tflite(words)
        return out

    def _ellipsis(self, key: str, command: Command, earlier: list[Command]) -> str:
        if key == "ckpt_path":
            return self._produced(f"outputs/{TASK_RUNS[command.task]}/<run>/checkpoints/last.ckpt", command, earlier)
        if key == "init_from":
            return str(self.imagenet_file)
        if key == "data.root":
            kind = self._mine_kind_of(command)
            self._prepare_mine(kind, self.cwd / f"mine_{kind}", int(command.value("data.num_classes") or 1))
            return f"mine_{kind}"
        raise KeyError(f"no value for the placeholder {key}=... in {command.text}")

    def _make_file(self, name: str, earlier: list[Command]) -> None:
        """Run the earlier command that writes ``name`` with ``--output``, if it has not run."""
        for previous in earlier:
            words = previous.words
            if "--output" in words and words[words.index("--output") + 1 : words.index("--output") + 2] == [name]:
                self.run(previous, earlier[: earlier.index(previous)])
                return

    def _produced(self, word: str, command: Command, earlier: list[Command]) -> str:
        """A path with ``<run>`` / ``<date_time>``: the newest that an earlier README command made."""
        key, sep, value = word.rpartition("=") if "=" in word else ("", "", word)
        pattern = re.sub(r"<run>|<date_time>", "*", value)
        found = self.newest(pattern)
        if found is None:
            # Run the commands before this one that have not run yet, until one makes it: first the
            # README's plain training command of that folder's task (outputs/<task_name>/...).
            folder = pattern.split("/")[1] if pattern.startswith("outputs/") else None
            plain = [
                c for c in earlier if c.words[:2] == ["python", "tools/train.py"] and c.words[2:] == [f"task={folder}"]
            ]
            # Then the commands that name the folder (experiment=sweep_ablations, tools/export.py),
            # and only then the others: running every earlier command repeats the other half's work.
            named = [c for c in earlier if folder and (f"={folder}" in c.text or c.tool == f"tools/{folder}.py")]
            for previous in plain + named + [c for c in earlier if c not in plain and c not in named]:
                if previous.id not in self.done and previous.words[:2] != ["make", "test"]:
                    self.run(previous, earlier[: earlier.index(previous)])
                found = self.newest(pattern)
                if found is not None:
                    break
        if found is None:
            raise FileNotFoundError(f"{value}: none of the README's commands before this one made it")
        resolved = str(found.relative_to(self.cwd))
        return f"{key}{sep}{resolved}" if sep else resolved

    def _size_overrides(self, command: Command, words: list[str]) -> list[str]:
        tool = command.tool
        keys = {w.split("=", 1)[0].lstrip("+") for w in words if "=" in w and not w.startswith("-")}
        if tool in ("tools/train.py", "make train"):
            args = [w for w in words[2:] if "=" in w and not w.startswith("-")]
            if tool == "make train":
                args = [f"task={command.value('TASK') or 'ssdlite'}"]
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name="train", overrides=[a for a in args if not a.startswith("hydra.")])
            public = [w for w in words if f"{self.data}/" in w and "/mine" not in w]
            extra = _tiny_overrides(cfg, keys)
            for name, classes in self.PUBLIC_CLASSES.items():
                if any(f"{self.data}/{name}" in w for w in public) and "data.num_classes" not in keys:
                    extra.append(f"data.num_classes={classes}")
            return extra
        if tool == "tools/export.py" and command.value("export.quantize"):
            return ["export.calibration_images=4"]
        if tool == "tools/quantize.py":
            return ["quantize.calibration_images=4", "quantize.iters=2", "quantize.repeats=1"]
        if tool == "tools/benchmark.py":
            return ["benchmark.image_size=96", "benchmark.iters=2", "benchmark.repeats=1", "benchmark.warmup=1",
                    "benchmark.train_steps=1", "benchmark.batch=2"]  # fmt: skip
        if tool == "tools/convert.py":
            return ["--calibration-images", "4"]
        return []

    def _outputs(self) -> set[Path]:
        return set(self.cwd.glob("outputs/*/*")) | set(self.cwd.glob("outputs/*/multirun/*"))

    def run(self, command: Command, earlier: list[Command], timeout: float = 600) -> Outcome:
        """Run a README command (once; its outcome is kept for the commands after it)."""
        if command.id in self.done:
            return self.done[command.id]
        words = self.resolve(command, earlier)
        words += self._size_overrides(command, words)
        before = self._outputs()
        if command.tool.startswith("make"):
            outcome = self._run_make(words, timeout)
        else:
            done = self.server.run(words, self.cwd, self.env, timeout=timeout)
            outcome = Outcome(words, done.returncode, done.stdout, done.stderr, seconds=done.seconds)
        outcome.new_outputs = sorted(self._outputs() - before)
        self.done[command.id] = outcome
        return outcome

    def _run_make(self, words: list[str], timeout: float) -> Outcome:
        """``make <target>`` of the repository, with this interpreter's environment standing in for
        .venv (already installed: its stamp is taken as up to date), run from the world's folder."""
        target, *overrides = words[1:]
        if target != "train":
            raise ValueError(f"make {target}: only `make train` can run inside the test suite")
        prefix = Path(sys.prefix)
        run_dir = self.cwd / "outputs" / "ssdlite" / "make_train"
        args = " ".join(shlex.quote(o) for o in overrides if "=" in o) + f" hydra.run.dir={run_dir}"
        argv = [
            "make", "-C", str(REPO_ROOT), "-o", f"{prefix}/.installed", target,
            f"VENV={prefix}", f"ARGS={args}",
        ]  # fmt: skip
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        return Outcome(argv, done.returncode, done.stdout, done.stderr)
