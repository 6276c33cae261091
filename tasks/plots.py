"""The paper's figures from Hydra multiruns (``tools/plot.py``).

* :func:`tradeoff_figure` - Figure 5: validation top-1 against multiply-adds, one line per input
  resolution (or per width multiplier), from a sweep over ``backbone.width_mult`` and
  ``data.image_size`` (``experiment=sweep_width_resolution``).
* :func:`ablation_figure` - Figure 6: validation top-1 after each epoch, (a) the linear bottleneck
  against a ReLU6 after the projection, (b) the shortcut between bottlenecks, between expansions,
  none (``experiment=sweep_ablations``).

A multirun folder holds one numbered folder per run, each with ``.hydra/config.yaml`` (what was
trained), ``train_metrics.json`` (written when the run finished) and ``csv/metrics.csv`` (the
validation scores of every epoch). Runs without ``train_metrics.json`` (failed or still running)
are left out and named in the log. The multiply-adds are counted on the network each run's config
builds (``vision_mnv2.complexity.count_macs``), so the x axis needs no measurement in the runs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["Run", "ablation_figure", "read_multirun", "tradeoff_figure"]

log = logging.getLogger(__name__)

METRIC = "val/top1"
SHORTCUT_LABELS = {
    "bottleneck": "shortcut between bottlenecks (paper)",
    "expansion": "shortcut between expansions",
    "none": "no residual connection",
}
ACTIVATION_LABELS = {"linear": "linear bottleneck (paper)", "relu6": "ReLU6 in bottleneck"}


@dataclass
class Run:
    """One finished run of a sweep: what it trained and how it scored."""

    path: Path
    config: dict
    best: float  # best validation top-1, in %
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, validation top-1 in %), epoch from 1
    _macs: int | None = field(default=None, repr=False)

    @property
    def backbone(self) -> dict:
        return self.config.get("backbone", {})

    @property
    def width_mult(self) -> float:
        return float(self.backbone.get("width_mult", 1.0))

    @property
    def image_size(self) -> int:
        return int(self.config["data"]["image_size"])

    @property
    def bottleneck_activation(self) -> str:
        return self.backbone.get("bottleneck_activation", "linear")

    @property
    def shortcut(self) -> str:
        return self.backbone.get("shortcut", "bottleneck")


def _percent(value: float) -> float:
    # torchmetrics' accuracy is a fraction; the figures read in %.
    return 100.0 * value if value <= 1.0 else value


def _read_history(path: Path) -> list[tuple[int, float]]:
    """Validation top-1 per epoch from Lightning's CSV log (the last value logged for each epoch)."""
    if not path.is_file():
        return []
    by_epoch: dict[int, float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(METRIC, "")
            if value not in ("", None) and not math.isnan(float(value)):
                by_epoch[int(float(row["epoch"])) + 1] = _percent(float(value))
    return sorted(by_epoch.items())


def read_multirun(folder: str | Path) -> list[Run]:
    """The finished runs of a Hydra multirun folder, in job order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"multirun folder {str(folder)!r} does not exist")
    runs, unfinished = [], []
    jobs = sorted((p for p in folder.iterdir() if (p / ".hydra" / "config.yaml").is_file()), key=_job_order)
    for job in jobs:
        metrics_file = job / "train_metrics.json"
        if not metrics_file.is_file():
            unfinished.append(job.name)
            continue
        try:
            result = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{metrics_file}: not valid JSON ({exc})") from exc
        score = (result.get("best_score") or {}).get(METRIC, (result.get("metrics") or {}).get(METRIC))
        if score is None:
            raise ValueError(f"{metrics_file}: no {METRIC!r} among its metrics (is this a classification run?)")
        config = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "config.yaml"), resolve=False)
        runs.append(Run(job, config, _percent(float(score)), _read_history(job / "csv" / "metrics.csv")))
    if unfinished:
        log.warning("left out %d unfinished run(s) of %s: %s", len(unfinished), folder, ", ".join(unfinished))
    if not runs:
        raise ValueError(
            f"multirun folder {str(folder)!r} holds no finished run (numbered folders with .hydra/config.yaml "
            "and train_metrics.json)"
        )
    return runs


def _job_order(path: Path):
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def count_run_macs(run: Run) -> int:
    """Multiply-adds of the network the run's config builds, at the run's input size."""
    if run._macs is None:
        run._macs = _count_macs(run)
    return run._macs


def _count_macs(run: Run) -> int:
    from hydra.utils import instantiate  # noqa: PLC0415  (torch loads only when a figure is drawn)

    from vision_mnv2.complexity import count_macs  # noqa: PLC0415

    from .checkpoint_config import without_weights  # noqa: PLC0415

    config = without_weights(OmegaConf.create(run.config))  # the architecture is all that counts
    model = instantiate(config.model)
    return count_macs(model, (run.image_size, run.image_size))


def tradeoff_series(runs: list[Run], by: str = "resolution") -> dict[str, list[tuple[float, float]]]:
    """Figure 5's lines: ``{label: [(million MACs, top-1 %), ...]}`` sorted by MACs, one line per
    input resolution (``by="resolution"``) or per width multiplier (``by="width"``)."""
    if by not in ("resolution", "width"):
        raise ValueError(f"by must be 'resolution' or 'width', got {by!r}")
    groups: dict[float, list[tuple[float, float]]] = {}
    for run in runs:
        key = run.image_size if by == "resolution" else run.width_mult
        groups.setdefault(key, []).append((count_run_macs(run) / 1e6, run.best))
    label = "{:g} px" if by == "resolution" else "width {:g}"
    return {label.format(key): sorted(points) for key, points in sorted(groups.items())}


def _chance_line(ax, runs: list[Run]) -> None:
    """Dashed line at 100 / classes %, when every run has the same classes: short runs sit near it."""
    classes = {run.config.get("data", {}).get("num_classes") for run in runs}
    if len(classes) == 1 and isinstance(next(iter(classes)), int):
        chance = 100.0 / next(iter(classes))
        ax.axhline(chance, linestyle="--", color="gray", linewidth=1, label=f"chance ({chance:g}%)")


def _plain_log_ticks(axis) -> None:
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def _pyplot():
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("drawing the figures needs matplotlib: pip install 'vision-mnv2[plot]'") from exc
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def tradeoff_figure(runs: list[Run], by: str = "resolution", title: str | None = None):
    """Figure 5 as a matplotlib figure: top-1 against MACs (log scale), one line per group."""
    plt = _pyplot()
    series = tradeoff_series(runs, by)
    fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
    for label, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    if by == "resolution":  # name each point's width on the largest resolution's line
        last = max(runs, key=lambda r: r.image_size).image_size
        for run in runs:
            if run.image_size == last:
                ax.annotate(
                    f"width {run.width_mult:g}",
                    (count_run_macs(run) / 1e6, run.best),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=8,
                )
    _chance_line(ax, runs)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.12)
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("multiply-adds per image, millions (log scale)")
    ax.set_ylabel("validation top-1, %")
    ax.set_title(title or "Accuracy against multiply-adds (paper Figure 5)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="input size" if by == "resolution" else "width multiplier")
    return fig


def ablation_series(runs: list[Run]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Figure 6's curves: ``{"a": {label: [(epoch, top-1 %), ...]}, "b": {...}}``. Panel a: the runs
    with the paper's shortcut, by bottleneck activation; panel b: the runs with the linear
    bottleneck, by shortcut. Two runs of one variant are an error (the curves would hide one)."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {"a": {}, "b": {}}
    seen: dict[tuple[str, str], Path] = {}
    for run in runs:
        variant = (run.bottleneck_activation, run.shortcut)
        if variant in seen:
            raise ValueError(f"runs {seen[variant]} and {run.path} are the same variant {variant}: one run each")
        seen[variant] = run.path
        if not run.history:
            raise ValueError(f"run {run.path} has no {METRIC!r} per epoch in csv/metrics.csv (logger=default logs it)")
        if run.shortcut == "bottleneck":
            panels["a"][ACTIVATION_LABELS[run.bottleneck_activation]] = run.history
        if run.bottleneck_activation == "linear":
            panels["b"][SHORTCUT_LABELS[run.shortcut]] = run.history
    if not panels["a"] and not panels["b"]:
        raise ValueError("no run has the paper's shortcut or the linear bottleneck: nothing to compare")
    return panels


def ablation_figure(runs: list[Run], title: str | None = None):
    """Figure 6 as a matplotlib figure: (a) bottleneck activation, (b) shortcut; top-1 per epoch."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    panels = ablation_series(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True, layout="constrained")
    titles = {"a": "(a) Impact of non-linearity in the bottleneck", "b": "(b) Impact of residual connections"}
    for ax, (key, curves) in zip(axes, panels.items()):
        for label, history in curves.items():
            epochs, scores = zip(*history)
            ax.plot(epochs, scores, marker=".", label=label)
        _chance_line(ax, runs)
        ax.set_title(titles[key], fontsize=11)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if curves:
            ax.legend(loc="upper left", fontsize=9)
    axes[0].set_ylabel("validation top-1, %")
    fig.suptitle(title or "Ablations (paper Figure 6)")
    return fig
