"""Training runs through every documented switch, and never ends as if it had worked when it did not."""

from __future__ import annotations

import pytest

from tasks.runner import train

from .conftest import compose_config, tiny_classification_overrides


@pytest.mark.parametrize(
    "switches",
    [
        ["logger=none"],  # Lightning refuses its learning-rate monitor without a logger
        ["debug=overfit", "trainer.overfit_batches=2", "trainer.max_epochs=2"],  # a sequential sampler, bare indices
        ["debug=fdr"],
    ],
    ids=["logger=none", "debug=overfit", "debug=fdr"],
)
def test_documented_switches_train(tiny_cls_root, tmp_path, switches):
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1", *switches]
    result = train(compose_config("train", overrides, tmp_path))
    assert result["metrics"]["train/loss"] > 0 and "val/top1" in result["metrics"]
    assert (tmp_path / "train_metrics.json").is_file()


def test_no_callbacks_still_trains_and_keeps_a_checkpoint(tiny_cls_root, tmp_path):
    overrides = tiny_classification_overrides(tiny_cls_root, quiet_callbacks=False) + [
        "callbacks=none", "trainer.max_epochs=1",
    ]  # fmt: skip
    result = train(compose_config("train", overrides, tmp_path))
    assert result["last_checkpoint"] and result["metrics"]["val/top1"] >= 0
