"""Faults during training: a non-finite loss stops the run with where it happened, or is skipped;
checkpoints and weight files are read as data, so a hostile file cannot run code."""

from __future__ import annotations

import pytest
import torch

from tasks.runner import build, evaluate, train
from vision_mnv2.checkpoint import CheckpointError

from .helpers import compose_config, tiny_classification_overrides


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
    refused = "holds Python objects besides tensors and plain values"
    with pytest.raises(
        CheckpointError, match=f"not a checkpoint of this project: .*hostile.ckpt: it {refused}"
    ) as error:
        train(compose_config("train", overrides + [f"ckpt_path={hostile}"], tmp_path / "resume"))  # resuming
    messages = [str(error.value)]
    # (Hydra wraps the WeightsError raised while it builds the task module.)
    with pytest.raises(Exception, match=f"cannot read weights file .*hostile\\.ckpt.*{refused}") as error:
        train(compose_config("train", overrides + [f"init_from={hostile}"], tmp_path / "init"))  # transfer learning
    messages.append(str(error.value))
    eval_overrides = tiny_classification_overrides(tiny_cls_root, quiet_callbacks=False) + [f"ckpt_path={hostile}"]
    with pytest.raises(CheckpointError, match=refused) as error:  # evaluation
        evaluate(compose_config("eval", eval_overrides, tmp_path / "eval"))
    messages.append(str(error.value))
    assert not marker.exists()
    # torch's own message for such files suggests weights_only=False, i.e. running the file's code.
    assert not any("weights_only" in message for message in messages)
