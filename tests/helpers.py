"""What tests share besides fixtures: where the repository and the files beside it are, config
composition and small-run overrides, subprocess environments, numeric comparisons of two
computations, and task modules that misbehave on purpose (``module._target_=tests.helpers.<name>``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tasks.classification import ClassificationTask

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
REPO_ROOT = Path(__file__).resolve().parents[1]

# Files beside the repository (never committed; a user's clone has none): tests using them skip.
GOOGLE_MODELS = REPO_ROOT.parent / "shared" / "models" / "google"
GOOGLE_CLASSIFIER = GOOGLE_MODELS / "mobilenet_v2_1.0_224_quant.tflite"
GOOGLE_DEEPLAB = GOOGLE_MODELS / "deeplabv3_mnv2_pascal_quant.tflite"
needs_google = pytest.mark.skipif(
    not (GOOGLE_CLASSIFIER.is_file() and GOOGLE_DEEPLAB.is_file()),
    reason="Google's models in ../shared/models/google are not present",
)
KANGAROO = REPO_ROOT.parent / "shared" / "data" / "kangaroo"
needs_kangaroo = pytest.mark.skipif(
    not (KANGAROO / "annots").is_dir(), reason="real photos in ../shared/data/kangaroo are not present"
)

# Shape classes of the seg_root fixture's dataset, besides the background.
SEGMENTATION_SHAPES = 3


def _share_of_the_cores() -> int:
    """Torch threads of this test process: OMP_NUM_THREADS when it is set (CI reruns the numerics
    tests with 1), else the cores shared out among pytest-xdist's workers, so that 2 workers on 2
    cores run 2 threads in all, not 4 spinning against each other."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, cores // max(1, workers))


TEST_THREADS = _share_of_the_cores()

# Variables through which a launcher tells DDP processes where to meet.
_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


def subprocess_env(tmp_path: Path, processes: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a tool that a test runs in ``processes`` processes: its own dataset cache,
    this test process's share of the cores split between them, and no rendezvous variables, so
    that DDP runs on two pytest-xdist workers at once each take a free port of their own (Lightning
    asks the kernel for one when MASTER_PORT is unset) instead of inheriting the same one."""
    env = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS}
    threads = str(max(1, TEST_THREADS // processes))
    return {**env, "VISION_MNV2_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": threads, **extra}


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose a real entry config as ``tools/*.py`` would, with the run folder pinned to ``output_dir``.

    Hydra's own config is registered as ``@hydra.main`` does, so the code under test sees which
    overrides were given explicitly (the tools check them against checkpoints)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(output_dir / "cache")
    return cfg


def tiny_task_overrides(
    task: str, root: Path, num_classes: int, image_size: int, batch_size: int = 4, quiet_callbacks: bool = False
) -> list[str]:
    """Overrides that train ``task`` for 2 epochs in seconds on a small generated dataset at ``root``.

    ``quiet_callbacks`` drops the progress bar and summary (the training configs have them; the
    evaluation config has no callbacks at all, so it refuses these overrides)."""
    overrides = [
        f"task={task}",
        f"data.root={root}",
        "data.generate=null",
        f"data.num_classes={num_classes}",
        f"data.image_size={image_size}",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        "backbone.width_mult=0.35",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
    ]
    if quiet_callbacks:
        overrides += ["callbacks.progress_bar=null", "callbacks.model_summary=null"]
    return overrides


def tiny_classification_overrides(root: Path, quiet_callbacks: bool = True) -> list[str]:
    """:func:`tiny_task_overrides` for classification on a dataset shaped as the ``tiny_cls_root``
    fixture's (4 classes, 64 px)."""
    return tiny_task_overrides("classification", root, 4, 64, batch_size=8, quiet_callbacks=quiet_callbacks)


def train_with_callbacks(cfg: DictConfig, *callbacks) -> dict:
    """``tasks.runner.train(cfg)`` with ``callbacks`` added to the trainer it builds (to record or
    to interrupt what happens inside the run)."""
    import tasks.runner as runner  # noqa: PLC0415

    original = runner.build

    def build(cfg, with_loggers=True):
        datamodule, module, trainer = original(cfg, with_loggers)
        trainer.callbacks.extend(callbacks)
        return datamodule, module, trainer

    runner.build = build
    try:
        return runner.train(cfg)
    finally:
        runner.build = original


def learning_rates_by_part(module) -> tuple[dict[str, set[float]], int]:
    """The optimizer a task module builds (its backbone multiplier applied): the rates of its
    groups, by part ("backbone", "heads"), and how many parameters the groups hold. Asserts that
    no group mixes the two parts."""
    from tasks.optim import backbone_parameters, configure_optimizers  # noqa: PLC0415

    optimizer = configure_optimizers(module, module.optimizer_factory, None, backbone_lr_mult=module.backbone_lr_mult)
    backbone = {id(p) for p in backbone_parameters(module.model)}
    rates: dict[str, set[float]] = {"backbone": set(), "heads": set()}
    held = 0
    for group in optimizer.param_groups:
        parts = {"backbone" if id(p) in backbone else "heads" for p in group["params"]}
        assert len(parts) == 1, "a group is all backbone or all heads"
        rates[parts.pop()].add(group["lr"])
        held += len(group["params"])
    return rates, held


def realistic_batch_norm(model: torch.nn.Module, seed: int = 0, with_shifts: bool = False) -> torch.nn.Module:
    """Eval mode with random batch-norm statistics and scales: freshly initialised ones make every
    layer nearly an identity, which hides differences between two computations.

    ``with_shifts`` also draws the biases, each right after its layer's scales. It changes every
    later draw, so a test keeps the setting that its recorded outputs were made with."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                if with_shifts:
                    module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Comparing two computations of one network: they agree to rounding, so an argmax may differ only
# where the top two scores are closer than that rounding.


def top2_gaps(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """How far each prediction's highest score is above its runner-up (along ``dim``)."""
    top = scores.topk(2, dim=dim).values
    return top.select(dim, 0) - top.select(dim, 1)


def logit_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the true class's logit minus the best other one: positive where the argmax is right."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return true - others


def miou_bound(confusion: torch.Tensor, flips: int) -> float:
    """The most that ``flips`` pixels predicted as another class can move the mIoU of ``confusion``
    (rows truth, columns prediction; mIoU over the classes with a non-empty union, as
    vision_mnv2.metrics.segmentation_scores computes it).

    A flip moves each class's intersection and union by at most one pixel, so a class with union U
    and f flips changes its IoU by at most 2f / (U - f); flips that could empty a class's union, or
    give an absent class one, would change which classes are averaged: then nothing is bounded."""
    if flips == 0:
        return 0.0
    confusion = confusion.double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    if (union <= flips).any():
        return float("inf")
    return float((2 * flips / (union - flips)).clamp(max=1).mean())


def assert_same_detections(
    ours: dict, theirs: dict, box_atol: float, score_atol: float, score_thresh: float, limit: int, label: str = "labels"
) -> None:
    """Two computations of one detector give one image the same detections: each has a partner of
    the same ``label`` with its box within ``box_atol`` and its score within ``score_atol``, whatever
    the order (detections of near-equal scores may come in either). Only at the selection's edge
    may one side keep a detection the other does not: where its score is within ``score_atol`` of
    ``score_thresh``, or of the lowest kept score when ``limit`` detections were kept, as the rival
    it tied with may have been kept instead."""
    taken = torch.zeros(len(theirs["scores"]), dtype=torch.bool)
    lonely = []
    for index in torch.argsort(ours["scores"], descending=True).tolist():
        box_distance = (theirs["boxes"] - ours["boxes"][index]).abs().amax(1)
        close = (
            (theirs[label] == ours[label][index])
            & (box_distance <= box_atol)
            & ((theirs["scores"] - ours["scores"][index]).abs() <= score_atol)
            & ~taken
        )
        if close.any():  # the nearest box of those that qualify
            taken[int(torch.where(close, box_distance, float("inf")).argmin())] = True
        else:
            lonely.append(("ours", float(ours["scores"][index])))
    lonely += [("theirs", float(score)) for score, used in zip(theirs["scores"], taken) if not used]
    edge = score_thresh
    for side in (ours, theirs):
        if len(side["scores"]) >= limit:
            edge = max(edge, float(side["scores"].min()))
    beyond = [(side, score) for side, score in lonely if score > edge + score_atol]
    assert not beyond, f"detections without a partner, away from the edge at {edge:.6f}: {beyond}"


class NonFiniteOnRankOne(ClassificationTask):
    """A NaN loss in the first training step of DDP rank 1 only (its images are NaN)."""

    def training_step(self, batch, batch_idx: int):
        images, targets = batch
        if self.global_rank == 1 and self.global_step == 0:
            images = images * float("nan")
        return super().training_step((images, targets), batch_idx)
