"""Train and evaluate through the real configs and entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from tasks.runner import evaluate, train
from vision_mnv2.checkpoint import CheckpointError

from .helpers import REPO_ROOT, compose_config, subprocess_env, tiny_classification_overrides


def test_eval_without_a_checkpoint_is_a_clear_error(tiny_cls_root, tmp_path):
    cfg = compose_config(
        "eval",
        tiny_classification_overrides(tiny_cls_root, quiet_callbacks=False) + [f"ckpt_path={tmp_path}/none.ckpt"],
        tmp_path,
    )
    with pytest.raises(CheckpointError, match="checkpoint file .*none.ckpt' does not exist"):
        evaluate(cfg)


@pytest.mark.parametrize(
    "experiment, optimizer, lr",
    [("imagenet_sgd", torch.optim.SGD, 0.045), ("imagenet_rmsprop", torch.optim.RMSprop, 0.045)],
)
def test_paper_recipes_compose(tmp_path, experiment, optimizer, lr):
    cfg = compose_config("train", [f"experiment={experiment}", "data.root=/imagenet"], tmp_path)
    assert cfg.data.num_classes == 1000 and cfg.data.image_size == 224 and cfg.data.root == "/imagenet"
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, optimizer) and opt.defaults["lr"] == lr and opt.defaults["weight_decay"] == 4e-5
    model = instantiate(cfg.model)
    assert model.classifier[1].out_features == 1000


def test_command_line_train_and_eval(tiny_cls_root, tmp_path):
    env = subprocess_env(tmp_path)
    common = tiny_classification_overrides(tiny_cls_root, quiet_callbacks=False) + ["trainer.max_epochs=1"]
    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "tools/train.py", *common, "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (run_dir / ".hydra" / "config.yaml").is_file(), "every run saves its config"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # The checkpoint alone: task, model and data come from it.
    out = subprocess.run(
        [sys.executable, "tools/eval.py", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "val/top1" in out.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == str(last)


def test_full_coco_recipe_composes(tmp_path):
    cfg = compose_config("train", ["experiment=ssdlite_coco", "data.root=/coco"], tmp_path)
    assert cfg.task_name == "ssdlite_coco" and cfg.data.num_classes == 80 and cfg.data.image_size == 320
    assert cfg.data.train_annotations == "annotations/instances_train2017.json"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.15
    assert cfg.trainer.devices == 8 and cfg.trainer.strategy == "ddp" and cfg.trainer.max_epochs == 600
    assert cfg.module._target_ == "tasks.detection.DetectionTask"
    model = instantiate(cfg.model)
    assert model.transform.min_size == (320,) and model.head.classification_head.num_columns == 81


@pytest.mark.numerics
def test_ema_of_weights_is_one_override(tiny_cls_root, tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from tasks.runner import build

    overrides = tiny_classification_overrides(tiny_cls_root) + [
        "callbacks=ema",
        "callbacks.ema.decay=0.5",
        "trainer.max_epochs=1",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    _, _, trainer = build(cfg, with_loggers=False)
    assert len([c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging)]) == 1
    result = train(cfg)
    # Validation used the averaged weights, and they are what the checkpoint holds: evaluating it
    # repeats validation's computation (same weights, same batches, same module), to the last bit.
    evaluated = evaluate(compose_config("eval", [f"ckpt_path={result['last_checkpoint']}"], tmp_path / "eval"))
    assert evaluated["val/top1"] == pytest.approx(result["metrics"]["val/top1"], abs=1e-9)
