"""tools/plot.py on small fabricated multirun folders: the PNG is written and holds the expected series."""

from __future__ import annotations

import importlib.util
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tasks.plots import read_multirun
from vision_mnv2.complexity import count_macs
from vision_mnv2.models import mobilenet_v2

from .helpers import CONFIG_DIR, REPO_ROOT


def _plot_tool():
    spec = importlib.util.spec_from_file_location("plot_tool", REPO_ROOT / "tools" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder, job, *, width=0.35, size=32, activation="linear", shortcut="bottleneck", history=(), best=None):
    """One numbered run folder as tools/train.py writes it under a multirun."""
    run = folder / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"""task_name: sweep
backbone:
  name: mobilenet_v2
  width_mult: {width}
  output_stride: 32
  weights: null
  bottleneck_activation: {activation}
  shortcut: {shortcut}
head:
  dropout: 0.2
data:
  num_classes: 8
  image_size: {size}
model:
  _target_: vision_mnv2.models.${{backbone.name}}
  width_mult: ${{backbone.width_mult}}
  output_stride: ${{backbone.output_stride}}
  weights: null
  backbone_weights: ${{backbone.weights}}
  dropout: ${{head.dropout}}
  num_classes: ${{data.num_classes}}
  bottleneck_activation: ${{backbone.bottleneck_activation}}
  shortcut: ${{backbone.shortcut}}
"""
    )
    (run / "csv").mkdir()
    rows = ["epoch,step,train/loss,val/top1,val/top5"]
    for epoch, top1 in enumerate(history):
        rows.append(f"{epoch},{10 * epoch + 9},1.5,,")  # a training row: no validation score
        rows.append(f"{epoch},{10 * epoch + 9},,{top1},0.9")
    (run / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    best = max(history) if best is None else best
    (run / "train_metrics.json").write_text(
        json.dumps({"metrics": {"val/top1": history[-1]}, "best_score": {"val/top1": best}})
    )
    return run


def _sweep_config(experiment: str, overrides: list[str]):
    """The composed config with Hydra's own node, as the sweeper sees it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the jobs' own hydra: interpolations
    return cfg, OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)


@pytest.mark.parametrize(
    "overrides, sizes", [([], "48,64,96"), (["data=imagenet", "data.root=/imagenet"], "96,128,160,192,224")]
)
def test_width_resolution_sweep_switches_to_imagenet_with_one_override(overrides, sizes):
    cfg, params = _sweep_config("sweep_width_resolution", overrides)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert params == {"backbone.width_mult": "0.35,0.5,1.0", "data.image_size": sizes}
    assert cfg.task_name == "sweep_width_resolution" and cfg.data.num_classes == (8 if not overrides else 1000)
    assert cfg.model.builder == "mobilenet_v2"


@pytest.mark.parametrize("overrides, size", [([], 64), (["data=imagenet", "data.root=/imagenet"], 224)])
def test_ablation_sweep_covers_the_papers_variants(overrides, size):
    cfg, params = _sweep_config("sweep_ablations", overrides)
    assert params == {"+ablation": "paper,relu6_bottleneck,shortcut_expansion,no_shortcut"}
    assert cfg.data.image_size == size and cfg.task_name == "sweep_ablations"
    for variant, expected in [("relu6_bottleneck", ("relu6", "bottleneck")), ("no_shortcut", ("linear", "none"))]:
        job, _ = _sweep_config("sweep_ablations", [*overrides, f"+ablation={variant}"])
        assert (job.backbone.bottleneck_activation, job.backbone.shortcut) == expected


def test_tradeoff_figure_has_one_line_per_resolution(tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "multirun"
    scores = {(0.35, 32): 0.30, (0.5, 32): 0.40, (0.35, 48): 0.45, (0.5, 48): 0.55}
    for job, ((width, size), score) in enumerate(scores.items()):
        _write_run(folder, job, width=width, size=size, history=[score / 2, score])
    _write_run(folder, 4, width=1.0, size=64, history=[0.9]).joinpath("train_metrics.json").unlink()  # unfinished
    out = tmp_path / "docs" / "figure5.png"

    fig = _plot_tool().main(["tradeoff", str(folder), "--out", str(out)])

    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert sorted(lines) == ["32 px", "48 px", "chance (12.5%)"]
    for size in (32, 48):
        xs, ys = lines[f"{size} px"].get_data()
        expected_macs = [count_macs(mobilenet_v2(width_mult=w, num_classes=8), (size, size)) / 1e6 for w in (0.35, 0.5)]
        assert list(xs) == pytest.approx(expected_macs)
        assert list(ys) == pytest.approx([100 * scores[(w, size)] for w in (0.35, 0.5)])
    assert fig.axes[0].get_xscale() == "log"

    by_width = _plot_tool().main(["tradeoff", str(folder), "--by", "width", "--out", str(tmp_path / "w.png")])
    assert sorted(line.get_label() for line in by_width.axes[0].get_lines()) == [
        "chance (12.5%)",
        "width 0.35",
        "width 0.5",
    ]


def test_ablation_figure_has_one_curve_per_variant(tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "multirun"
    variants = [
        ("linear", "bottleneck"),
        ("linear", "expansion"),
        ("linear", "none"),
        ("relu6", "bottleneck"),
        ("relu6", "none"),
    ]
    histories = {}
    for job, (activation, shortcut) in enumerate(variants):
        histories[(activation, shortcut)] = [0.1 * (job + 1), 0.1 * (job + 2), 0.1 * (job + 3)]
        _write_run(folder, job, activation=activation, shortcut=shortcut, history=histories[(activation, shortcut)])
    out = tmp_path / "figure6.png"

    fig = _plot_tool().main(["ablation", str(folder), "--out", str(out)])

    assert out.is_file()
    panel_a, panel_b = ({line.get_label(): line for line in ax.get_lines()} for ax in fig.axes[:2])
    assert sorted(panel_a) == ["ReLU6 in bottleneck", "chance (12.5%)", "linear bottleneck (paper)"]
    assert sorted(panel_b) == [
        "chance (12.5%)",
        "no residual connection",
        "shortcut between bottlenecks (paper)",
        "shortcut between expansions",
    ]
    xs, ys = panel_a["ReLU6 in bottleneck"].get_data()
    assert list(xs) == [1, 2, 3] and list(ys) == pytest.approx([100 * v for v in histories[("relu6", "bottleneck")]])
    xs, ys = panel_b["shortcut between expansions"].get_data()
    assert list(ys) == pytest.approx([100 * v for v in histories[("linear", "expansion")]])


def test_bad_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_multirun(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no finished run"):
        read_multirun(tmp_path / "empty")
    folder = tmp_path / "twice"
    _write_run(folder, 0, history=[0.5])
    _write_run(folder, 1, history=[0.6])
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="same variant"):
        _plot_tool().main(["ablation", str(folder), "--out", str(tmp_path / "x.png")])
