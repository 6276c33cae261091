"""Faults during training: a non-finite loss stops the run with where it happened, or is skipped;
checkpoints and weight files are read as data, so a hostile file cannot run code."""

from __future__ import annotations

import pytest
import torch

from tasks.runner import build, evaluate, train

from .conftest import compose_config, tiny_classification_overrides


def _poisoned(cfg):
    datamodule, module, trainer = build(cfg)
    with torch.no_grad():
        module.model.classifier[1].bias.fill_(float("nan"))
    return datamodule, module, trainer


def test_nonfinite_loss_stops_the_run_naming_the_step(tiny_cls_root, tmp_path):
    cfg = compose_config("train", tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1"], tmp_path)
    datamodule, module, trainer = _poisoned(cfg)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at epoch 0, step 0, batch 0"):
        trainer.fit(module, datamodule=datamodule)


def test_nonfinite_loss_steps_can_be_skipped_and_counted(tiny_cls_root, tmp_path):
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1", "module.nonfinite_loss=skip"]
    datamodule, module, trainer = _poisoned(compose_config("train", overrides, tmp_path))
    before = {k: v.clone() for k, v in module.model.state_dict().items() if v.is_floating_point()}
    trainer.fit(module, datamodule=datamodule)
    assert module.skipped_steps == 4, "32 images in batches of 8, every one skipped"
    after = module.model.state_dict()
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).all() for k in weights), (
        "no update was applied"
    )


def test_detection_batches_name_their_image_ids(tmp_path):
    from tasks.detection import DetectionTask  # noqa: PLC0415

    module = DetectionTask(torch.nn.Linear(1, 1), optimizer=torch.optim.SGD)
    batch = ([torch.zeros(3, 8, 8)] * 2, [{"image_id": torch.tensor(7)}, {"image_id": torch.tensor(42)}])
    with pytest.raises(FloatingPointError, match=r"image ids \[7, 42\]"):
        module.checked_loss(torch.tensor(float("inf")), batch, 3)
    assert module.checked_loss(torch.tensor(1.5), batch, 3) == 1.5
    with pytest.raises(ValueError, match="nonfinite_loss"):
        DetectionTask(torch.nn.Linear(1, 1), optimizer=torch.optim.SGD, nonfinite_loss="ignore")


class _RunsCode:
    """A pickle that runs code when loaded without weights_only: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_checkpoints_cannot_run_code(tiny_cls_root, tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, hostile)
    overrides = tiny_classification_overrides(tiny_cls_root)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):  # resuming
        train(compose_config("train", overrides + [f"ckpt_path={hostile}"], tmp_path / "resume"))
    with pytest.raises(
        Exception, match=r"cannot read weights file .*hostile\.ckpt.*Weights only load failed"
    ):  # transfer learning
        train(compose_config("train", overrides + [f"init_from={hostile}"], tmp_path / "init"))
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):  # evaluation
        evaluate(
            compose_config(
                "eval",
                tiny_classification_overrides(tiny_cls_root, quiet_callbacks=False) + [f"ckpt_path={hostile}"],
                tmp_path / "eval",
            )
        )
    assert not marker.exists()
