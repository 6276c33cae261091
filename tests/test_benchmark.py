"""tools/benchmark.py: our network against torchvision's, measured in one run, from a checkpoint
alone; the report stays in the run folder unless the docs are to be updated."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from omegaconf import OmegaConf

from tasks.cli import with_task_from_checkpoint
from tools.benchmarks.against_torchvision import run_benchmark
from vision_mnv2.benchmark import time_call
from vision_mnv2.checkpoint import load_model, save_model
from vision_mnv2.models import ssdlite_mobilenet_v2
from vision_mnv2.pipelines import describe

from .helpers import compose_config

QUICK = [
    "benchmark.batch=2",
    "benchmark.warmup=0",
    "benchmark.iters=1",
    "benchmark.repeats=1",
    "benchmark.train_steps=0",
]


def test_benchmark_of_a_checkpoint_against_torchvision(tmp_path):
    model = ssdlite_mobilenet_v2(num_classes=2, width_mult=0.35, image_size=96).eval()
    ckpt = save_model(tmp_path / "det.ckpt", model, describe("detection", model, {}))
    docs = tmp_path / "BENCHMARKS.md"
    overrides = with_task_from_checkpoint(["tool", f"ckpt_path={ckpt}", *QUICK, f"benchmark.docs={docs}"])[1:]
    docs.write_text("# Benchmarks\n\n<!-- benchmark:benchmark -->\nold numbers\n<!-- /benchmark:benchmark -->\n")
    text = run_benchmark(compose_config("benchmark", overrides, tmp_path / "run"))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    ours, theirs, ratio = rows[1], rows[2], rows[3]
    assert "det.ckpt" in ours and "torchvision ssdlite320_mobilenet_v3_large" in theirs
    assert "at 96x96" in text, "both measured at the checkpoint's input size"
    params = sum(p.numel() for p in model.parameters())
    assert f"{params / 1e6:.2f}M" in ours
    assert float(ratio.split("|")[2]) == round(params / 3_440_060, 2)
    assert (tmp_path / "run" / "benchmark.md").read_text() == text
    assert "old numbers" in docs.read_text(), "the project's recorded numbers change only when asked"


def test_time_call_measures_seconds_per_call():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01)

    seconds = time_call(work, warmup=1, iters=5)
    assert 0.009 < seconds < 0.05 and len(calls) >= 6


def test_finetune_classification_benchmark_runs_as_documented(tmp_path, tiny_cls_root):
    """The fine-tuning benchmark's recipes train the given steps of the preset's batch from one
    checkpoint and are scored on the same photos, on a folder in the ImageNet layout (one seed here;
    the segmentation benchmark's test covers several)."""
    from tools.benchmarks.finetune_classification import main
    from vision_mnv2.models import mobilenet_v2

    init = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "init.ckpt", init, describe("classification", init, {"image_size": 224}))
    out = tmp_path / "out"
    argv = ["--init", str(ckpt), "--folder", str(tiny_cls_root), "--steps", "2", "--output", str(out)]
    assert main([*argv, "--from-scratch"]) == 0
    text = (out / "finetune_classification.md").read_text()
    rows = _table_rows(text)
    assert [name.strip() for name, _, _ in rows] == [
        "torchvision transfer-learning tutorial",
        "experiment=finetune_classification_custom",
        "task=classification (the synthetic-data recipe)",
    ]
    assert all(0.0 <= float(top1) <= 1.0 and float(seconds) >= 0 for _, top1, seconds in rows)
    batch = compose_config("train", ["experiment=finetune_classification_custom", "data.root=x"], tmp_path / "c")
    assert f"2 steps of {batch.data.batch_size}" in text and "Preset / reference top-1 (means)" in text
    for run in ("preset_seed0", "task"):
        written = json.loads((out / run / "train_metrics.json").read_text())
        assert written["steps"] == written["step_budget"] == 2, "every recipe trains the same steps"
        assert written["images"] == 2 * batch.data.batch_size, "and sees as many images"


def test_finetune_segmentation_benchmark_runs_as_documented(tmp_path, seg_root):
    """The segmentation fine-tuning benchmark trains torchvision's reference recipe and the preset
    the same steps of the preset's batch from one checkpoint, per seed, and scores both with the
    same pipeline on the same photos."""
    from tools.benchmarks.finetune_segmentation import ReferenceDeepLab, main
    from vision_mnv2.models import mobilenet_v2

    init = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "init.ckpt", init, describe("classification", init, {"image_size": 224}))
    out = tmp_path / "out"
    argv = ["--init", str(ckpt), "--root", str(seg_root), "--steps", "2", "--crop", "64", "--seeds", "2"]
    assert main([*argv, "--preset-override", "module.backbone_lr_mult=0.5", "--output", str(out)]) == 0
    text = (out / "finetune_segmentation.md").read_text()
    rows = _table_rows(text)
    assert [name.strip() for name, _, _ in rows] == [
        "torchvision segmentation reference (DeepLabHead)",
        "experiment=finetune_deeplabv3_custom module.backbone_lr_mult=0.5",  # a variant, as measured
    ]
    for _, miou, seconds in rows:
        mean, spread = re.fullmatch(r"\s*([\d.]+) ± ([\d.]+) \([\d.]+-[\d.]+\)\s*", miou).groups()
        assert 0.0 <= float(mean) <= 1.0 and float(spread) >= 0 and float(seconds) >= 0
    batch = compose_config("train", ["experiment=finetune_deeplabv3_custom", "data.root=x"], tmp_path / "c")
    assert f"2 steps of {batch.data.batch_size} crops of 64" in text and "Preset / reference mIoU (means)" in text
    for run in ("preset_seed0", "preset_seed1"):
        written = json.loads((out / run / "train_metrics.json").read_text())
        assert written["steps"] == 2 and written["images"] == 2 * batch.data.batch_size
        recorded = OmegaConf.load(out / run / ".hydra" / "config.yaml")
        assert recorded.module.backbone_lr_mult == 0.5 and recorded.data.image_size == 64
    # The reference is torchvision's head on the checkpoint's backbone (its width), not this project's.
    reference = ReferenceDeepLab(3, {"width_mult": 0.35})
    assert type(reference.head).__name__ == "DeepLabHead" and reference.eval()(torch.rand(1, 3, 64, 80)).shape == (
        1,
        3,
        64,
        80,
    )


def _voc_xml_beside_photos(coco_root, split: str, folder):
    """The generated COCO split as photos with their Pascal VOC XML beside them (the cards layout)."""
    import shutil

    from .readme_world import _voc_xml

    folder.mkdir(parents=True)
    annotations = json.loads((coco_root / "annotations" / f"instances_{split}2017.json").read_text())
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    for image in annotations["images"]:
        shutil.copy(coco_root / f"{split}2017" / image["file_name"], folder / image["file_name"])
        objects = [
            (names[a["category_id"]], a["bbox"]) for a in annotations["annotations"] if a["image_id"] == image["id"]
        ]
        xml = _voc_xml(image["file_name"], image["width"], image["height"], objects)
        (folder / f"{image['file_name'].rsplit('.', 1)[0]}.xml").write_text(xml)
    return sorted(names.values())


def test_finetune_detection_benchmark_runs_as_documented(tmp_path, det_root):
    """The detection fine-tuning benchmark trains torchvision's SSD reference recipe and the preset
    the same steps of the preset's batch on the same network from one checkpoint, and scores both
    with the same pipeline on the photos given for validation (VOC XML beside the photos)."""
    from tools.benchmarks.finetune_detection import REFERENCE_NETWORK, _reference_network, main
    from vision_mnv2.models import mobilenet_v2

    init = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "init.ckpt", init, describe("classification", init, {"image_size": 224}))
    names = _voc_xml_beside_photos(det_root, "train", tmp_path / "photos" / "train")
    assert _voc_xml_beside_photos(det_root, "val", tmp_path / "photos" / "test") == names
    out = tmp_path / "out"
    argv = ["--init", str(ckpt), "--annotations", str(tmp_path / "photos" / "train"), "--steps", "2"]
    argv += ["--val-annotations", str(tmp_path / "photos" / "test"), "--preset-override", "data.image_size=128"]
    argv += ["--preset-override", "data.batch_size=4"]
    assert main([*argv, "--output", str(out)]) == 0
    text = (out / "finetune_detection.md").read_text()
    rows = _table_rows(text)
    assert [name.strip() for name, _, _ in rows] == [
        "torchvision SSD reference (ssdlite320 recipe)",
        "experiment=finetune_ssdlite_custom data.image_size=128 data.batch_size=4",
    ]
    for _, score, seconds in rows:
        mean = float(score.split("±")[0])
        assert 0.0 <= mean <= 1.0 and float(seconds) >= 0
    assert "2 steps of 4" in text and "Preset / reference mAP (means)" in text
    assert "Photos: 8 training / 4 validation (photos)" in text
    written = json.loads((out / "preset_seed0" / "train_metrics.json").read_text())
    assert written["steps"] == 2 and written["images"] == 2 * 4
    # The reference trains the preset's network whole: nothing frozen, batch norm adapting.
    common = [f"data.root={out / 'data'}", f"data.num_classes={len(names)}", f"init_from={ckpt}"]
    network = _reference_network(["experiment=finetune_ssdlite_custom", *common], tmp_path / "r", str(ckpt))
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(p.requires_grad for p in network.parameters()) and type(norms[0]) is torch.nn.BatchNorm2d
    assert {m.momentum for m in norms} == {0.03} and "model.frozen_bn=false" in REFERENCE_NETWORK
    # ... and is the preset's network: the checkpoint's width, the same layers and shapes.
    preset, _ = load_model(out / "preset_seed0" / "checkpoints" / "last.ckpt")
    assert {k: v.shape for k, v in network.state_dict().items()} == {k: v.shape for k, v in preset.state_dict().items()}


def test_finetune_benchmark_measures_every_set_of_a_folder(tmp_path, tiny_cls_root, seg_root, det_root):
    """The one fine-tuning benchmark finds each set's task by its layout (ImageNet folders, VOC
    segmentation, VOC XML as annots/ + images/ or photos with XML beside them), runs that task's
    comparison, writes each set's section and a summary against the targets into the docs file."""
    import shutil

    from tools.benchmarks.finetune import DEFAULT_STEPS, TARGETS, find_sets, main, set_section
    from vision_mnv2.data.checks import DatasetError
    from vision_mnv2.models import mobilenet_v2

    data = tmp_path / "data"
    shutil.copytree(tiny_cls_root, data / "sky")
    shutil.copytree(seg_root, data / "pets")
    _voc_xml_beside_photos(det_root, "train", data / "cards" / "train")
    _voc_xml_beside_photos(det_root, "val", data / "cards" / "test")
    # The kangaroo layout: every photo in images/, its XML in annots/.
    _voc_xml_beside_photos(det_root, "train", data / "roos" / "images")
    (data / "roos" / "annots").mkdir()
    for xml in (data / "roos" / "images").glob("*.xml"):
        xml.rename(data / "roos" / "annots" / xml.name)
    (data / "notes").mkdir()  # not a set: passed over, unless named
    assert {name: task for name, (task, _) in find_sets(data).items()} == {
        "cards": "detection",
        "pets": "segmentation",
        "roos": "detection",
        "sky": "classification",
    }
    with pytest.raises(DatasetError, match="notes: not a photo set"):
        find_sets(data, ["notes"])

    init = mobilenet_v2(num_classes=10, width_mult=0.35).eval()
    ckpt = save_model(tmp_path / "init.ckpt", init, describe("classification", init, {"image_size": 224}))
    docs = tmp_path / "BENCHMARKS.md"
    argv = ["--init", str(ckpt), "--data", str(data), "--sets", "sky,pets,roos", "--output", str(tmp_path / "out")]
    argv += ["--classification-steps", "2", "--segmentation-steps", "1", "--detection-steps", "1", "--crop", "64"]
    argv += ["--preset-override", "detection:data.batch_size=4", "--preset-override", "detection:data.image_size=128"]
    with pytest.raises(SystemExit):
        main([*argv, "--preset-override", "detector:data.batch_size=4"])
    assert main([*argv, "--update-docs", "--docs", str(docs)]) == 0
    text = docs.read_text()
    # Sections named by set, and by budget where it is not the task's default.
    for section in ("finetune", "finetune_sky_2steps", "finetune_pets_1steps", "finetune_roos_1steps"):
        assert text.count(f"<!-- benchmark:{section} -->") == 1
    assert "finetune_cards" not in text, "only the named sets"
    assert set_section("sky", "classification", DEFAULT_STEPS["classification"]) == "finetune_sky"
    summary = text.split("<!-- benchmark:finetune -->")[1].split("<!-- /")[0]
    rows = _table_rows(summary)
    assert [(r[0], r[1], r[3], r[7]) for r in rows] == [
        ("pets", "segmentation", "1", f"{TARGETS['segmentation'][0]:.2f}x"),
        ("roos", "detection", "1", f"{TARGETS['detection'][0]:.2f}x"),
        ("sky", "classification", "1", f"{TARGETS['classification'][0]:.2f}x"),
    ]
    for row in rows:
        preset, reference = float(row[4].split()[0]), float(row[5])
        ratio, met = row[6], row[8]
        if ratio == "n/a":  # a ratio to nothing
            assert reference == 0 and met == "n/a"
            continue
        # The table shows 3 decimals: the ratio lies within what those roundings allow (a reference
        # shown as 0.000 scored something below 0.0005, so the ratio has no upper bound).
        low = (preset - 5e-4) / (reference + 5e-4)
        high = (preset + 5e-4) / (reference - 5e-4) if reference else float("inf")
        assert low - 0.005 <= float(ratio[:-1]) <= high + 0.005
        assert met == ("yes" if float(ratio[:-1]) >= float(row[7][:-1]) else "no")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d, ([0-9a-f]{7,}(\+changes)?|unknown)", row[9]), "date, commit"
    assert "2 steps of 16" in summary and "1 steps of 8" in summary and "1 steps of 4" in summary
    assert "experiment=finetune_ssdlite_custom data.batch_size=4 data.image_size=128" in text, "the variant, named"
    assert "Preset variants measured: `detection:data.batch_size=4`, `detection:data.image_size=128`." in summary

    # A later run of one set at another budget, into the same output folder: the summary keeps the
    # earlier run's sets that measured the same presets (not the detection variant), naming its command.
    first = _command_of(summary)
    again = ["--init", str(ckpt), "--data", str(data), "--sets", "sky", "--output", str(tmp_path / "out")]
    assert main([*again, "--classification-steps", "3", "--update-docs", "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert "<!-- benchmark:finetune_sky_3steps -->" in text and "<!-- benchmark:finetune_sky_2steps -->" in text
    summary = text.split("<!-- benchmark:finetune -->")[1].split("<!-- /")[0]
    assert [(r[0], r[2]) for r in _table_rows(summary)] == [
        ("pets", "1 steps of 8"),
        ("sky", "2 steps of 16"),
        ("sky", "3 steps of 16"),
    ]
    assert f"by these commands:\n\n- `{first}`" in summary and "--classification-steps 3" in _command_of(summary)
    (tmp_path / "out" / "results" / "sky-2steps.json").write_text("{")
    with pytest.raises(DatasetError, match="sky-2steps.json: not a result of this benchmark"):
        main([*again, "--classification-steps", "3"])


def _command_of(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("Command: `")).split("`")[1]


def _table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's rows in ``text``, its header left out."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]


def test_recipes_table_ratio_of_the_means_and_a_reference_of_nothing():
    from vision_mnv2.reports import recipes_table

    lines = recipes_table([("reference", [0.2, 0.4], 10.0), ("preset", [0.45, 0.45], 12.0)], "mAP")
    assert (
        lines[2] == "| reference | 0.300 ± 0.141 (0.200-0.400) | 10 |"
        and lines[3] == "| preset | 0.450 ± 0.000 (0.450-0.450) | 12 |"
    )
    assert lines[-1] == "Preset / reference mAP (means): **1.500x**."
    assert recipes_table([("reference", [0.0], 1.0), ("preset", [0.1], 1.0)], "mAP")[-1] == (
        "Preset / reference mAP (means): n/a (the reference scored 0)."
    )
