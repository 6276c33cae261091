"""Shared fixtures: small generated datasets and Hydra config composition on the real configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vision_mnv2.data import write_classification_dataset

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

# Two cores: keep intra-op threads from oversubscribing when a test starts worker processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_cls_root(tmp_path_factory) -> Path:
    """4 classes, 8 training and 4 validation images per class, 64 px."""
    root = tmp_path_factory.mktemp("data") / "tiny_cls"
    return write_classification_dataset(root, num_classes=4, train_per_class=8, val_per_class=4, image_size=64, seed=1)


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


def tiny_classification_overrides(root: Path, quiet_callbacks: bool = True) -> list[str]:
    """Overrides that make the classification task run in seconds on the tiny dataset.

    ``quiet_callbacks`` drops the progress bar and summary (the training configs have them; the
    evaluation config has no callbacks at all)."""
    overrides = [
        "task=classification",
        f"data.root={root}",
        "data.generate=null",
        "data.num_classes=4",
        "data.image_size=64",
        "data.batch_size=8",
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


def tiny_task_overrides(task: str, root: Path, num_classes: int, image_size: int) -> list[str]:
    """Overrides that train ``task`` for 2 epochs in seconds on a small generated dataset at ``root``."""
    return [
        f"task={task}",
        f"data.root={root}",
        "data.generate=null",
        f"data.num_classes={num_classes}",
        f"data.image_size={image_size}",
        "data.batch_size=4",
        "data.num_workers=0",
        "backbone.width_mult=0.35",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "+trainer.enable_progress_bar=false",
    ]


def realistic_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Eval mode with random batch-norm statistics and scales: freshly initialised ones make every
    layer nearly an identity, which hides differences between two computations."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()
