"""A fine-tuning budget stated in steps (``trainer.max_steps``): exactly that many steps whatever the
dataset's size, the schedule laid over them, validation and a checkpoint after the last one, and
a summary of what the budget bought."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from tasks.optim import warmup_factor
from tasks.runner import train

from .helpers import compose_config, tiny_classification_overrides, train_with_callbacks

BASE_LR = 4.0e-3  # the classification task's AdamW rate
PER_EPOCH = 4  # tiny_cls_root: 32 training images, batch 8


class _StepRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.validated_at: list[int] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated_at.append(trainer.global_step)


def _train_recording(cfg) -> tuple[dict, _StepRates]:
    recorder = _StepRates()
    return train_with_callbacks(cfg, recorder), recorder


def test_a_step_budget_trains_that_many_steps_past_the_presets_epochs(tiny_cls_root, tmp_path, caplog):
    """10 steps where the preset's 2 epochs hold 8: the budget wins, the per-epoch cosine runs per
    step over the 10, and the run is validated and checkpointed after step 10, mid-epoch."""
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_steps=10", "module.warmup_epochs=0"]
    with caplog.at_level(logging.INFO, logger="tasks"):
        result, recorder = _train_recording(compose_config("train", overrides, tmp_path))
    assert len(recorder.rates) == 10
    cosine = [BASE_LR * (1 + math.cos(math.pi * step / 10)) / 2 for step in range(10)]
    assert recorder.rates == pytest.approx(cosine)
    assert recorder.validated_at == [4, 8, 10], "after each epoch, and after the budget's last step"
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert last["global_step"] == 10
    written = json.loads((tmp_path / "train_metrics.json").read_text())
    assert (written["steps"], written["epochs"], written["images"], written["step_budget"]) == (10, 2.5, 80, 10)
    assert written == json.loads(json.dumps(result))
    messages = [r.getMessage() for r in caplog.records]
    [summary] = [m for m in messages if m.startswith("Training done:")]
    assert summary.startswith("Training done: 10 steps of a budget of 10 (2.50 epochs, 80 images) in ")
    assert any("max_epochs=2 is not used" in m for m in messages)
    assert any("CosineAnnealingLR schedule runs over the budget of 10 steps" in m for m in messages)


def test_warm_up_under_a_budget_is_at_most_half_of_it(tiny_cls_root, tmp_path):
    """Two epochs of warm-up (8 steps) in a 6-step budget: 3 steps of warm-up, then the cosine."""
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_steps=6", "module.warmup_epochs=2"]
    _, recorder = _train_recording(compose_config("train", overrides, tmp_path))
    cosine = [BASE_LR * (1 + math.cos(math.pi * step / 6)) / 2 for step in range(6)]
    assert recorder.rates == pytest.approx([rate * warmup_factor(step, 3) for step, rate in enumerate(cosine)])


class _Interrupt(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 6:
            raise RuntimeError("interrupted")


def test_an_interrupted_budgeted_run_resumes_to_the_same_budget(tiny_cls_root, tmp_path):
    """Stopped at step 6 of 10, the run resumes from its last checkpoint (the end of epoch 1, step
    4) and trains to step 10 on the schedule it started: the rates equal an uninterrupted run's."""
    common = tiny_classification_overrides(tiny_cls_root) + ["logger=none", "module.warmup_epochs=0"]
    budget = common + ["trainer.max_steps=10"]
    with pytest.raises(RuntimeError, match="interrupted"):
        train_with_callbacks(compose_config("train", budget, tmp_path / "a"), _Interrupt())
    result, recorder = _train_recording(compose_config("train", budget + ["ckpt_path=last"], tmp_path / "b"))
    assert result["steps"] == 10 and result["step_budget"] == 10 and result["images"] == 6 * 8
    assert result["resumed_from"] == str(tmp_path / "a" / "checkpoints" / "last.ckpt")
    cosine = [BASE_LR * (1 + math.cos(math.pi * step / 10)) / 2 for step in range(4, 10)]
    assert recorder.rates == pytest.approx(cosine), "steps 5 to 10 of the cosine over 10"
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert last["global_step"] == 10, "the checkpoints continue in the resumed run's folder"


def test_the_last_steps_are_validated_in_an_epoch_that_validation_skips(tiny_cls_root, tmp_path):
    """check_val_every_n_epoch=2: epoch 2 (steps 5-8) is validated, and the budget's end in epoch 3,
    which that setting would skip, is validated and checkpointed too."""
    overrides = tiny_classification_overrides(tiny_cls_root) + [
        "trainer.max_steps=10",
        "trainer.check_val_every_n_epoch=2",
        "logger=none",
    ]
    _, recorder = _train_recording(compose_config("train", overrides, tmp_path))
    assert recorder.validated_at == [8, 10]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 10


def test_warm_up_without_a_budget_is_as_long_as_asked(tiny_cls_root, tmp_path):
    """The half-the-run cap is for budgets: one epoch of warm-up in a one-epoch run ramps over it all."""
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1", "module.warmup_epochs=1"]
    _, recorder = _train_recording(compose_config("train", overrides, tmp_path))
    assert recorder.rates == pytest.approx([BASE_LR * warmup_factor(step, PER_EPOCH) for step in range(PER_EPOCH)])


def test_a_run_recorded_before_the_budget_setting_existed_still_resumes(tiny_cls_root, tmp_path):
    """A run whose recorded settings have no trainer.max_steps ran without a budget: ckpt_path=last
    continues it (a missing key would otherwise count as another setting)."""
    common = tiny_classification_overrides(tiny_cls_root) + ["logger=none"]
    train(compose_config("train", common + ["trainer.max_epochs=1"], tmp_path / "a"))
    recorded = tmp_path / "a" / ".hydra" / "config.yaml"
    settings = OmegaConf.load(recorded)
    del settings.trainer["max_steps"]
    OmegaConf.save(settings, recorded)
    result = train(compose_config("train", common + ["trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "b"))
    assert result["steps"] == 2 * PER_EPOCH
    assert torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
