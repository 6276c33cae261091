"""Kill -9 in the middle of training, then resume from last.ckpt: it holds the latest finished epoch
(not only the best one) and the resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.runner import train

from .helpers import REPO_ROOT, compose_config, subprocess_env, tiny_classification_overrides


def _train_command(root, run_dir, *extra):
    overrides = tiny_classification_overrides(root) + [
        "trainer.max_epochs=4", "trainer.deterministic=true", "logger=none", "callbacks.lr_monitor=null",
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    return [sys.executable, "tools/train.py", *overrides]


def test_killed_run_resumes_from_its_latest_epoch(tiny_cls_root, tmp_path):
    """With EMA of the weights and two (persistent) loader workers, whose random state a resumed
    run cannot restore: order, augmentation and dropout are seeded per epoch, sample and step."""
    env = subprocess_env(tmp_path)
    extra = ("callbacks=ema", "data.num_workers=2")
    uninterrupted = subprocess.run(
        _train_command(tiny_cls_root, tmp_path / "u", *extra),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    last = tmp_path / "k" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_train_command(tiny_cls_root, tmp_path / "k", *extra), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved_epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert saved_epoch < 3, "killed before the end"

    # ckpt_path=last: the newest last.ckpt among the task's earlier runs (here: the killed one).
    resumed = subprocess.run(
        _train_command(tiny_cls_root, tmp_path / "k2", *extra, "ckpt_path=last"),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"ckpt_path=last: resuming from {last}" in (tmp_path / "k2" / "train.log").read_text()
    expected = torch.load(tmp_path / "u" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The resumed run keeps writing into the killed run's checkpoints folder, so that the best score
    # so far is remembered (Lightning forgets it when the folder changes).
    assert not (tmp_path / "k2" / "checkpoints").exists()
    got = torch.load(last, map_location="cpu", weights_only=True)
    best = json.loads((tmp_path / "k2" / "train_metrics.json").read_text())
    best_u = json.loads((tmp_path / "u" / "train_metrics.json").read_text())
    assert best["best_score"] == best_u["best_score"]
    assert Path(best["best_checkpoint"]).name == Path(best_u["best_checkpoint"]).name
    # last.ckpt is rewritten every epoch, also when the monitored metric did not improve (Lightning's
    # save_last alone would leave it at the best epoch, and a resume would redo the epochs since).
    assert expected["epoch"] == got["epoch"] == 3 and expected["global_step"] == got["global_step"] == 16
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    # Deterministic mode on CPU: the resumed run ends with the uninterrupted run's weights, bit for bit.
    differing = [
        name for name, tensor in expected["state_dict"].items() if not torch.equal(tensor, got["state_dict"][name])
    ]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    for key in ("current_model_state", "optimizer_states", "lr_schedulers"):  # the EMA's raw weights, AdamW, cosine
        assert key in got and _equal(got[key], expected[key]), key


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_ddp_on_two_cpu_processes(tiny_cls_root, tmp_path):
    """trainer=ddp: two gloo processes launched by Lightning from the Hydra entry point."""
    command = _train_command(tiny_cls_root, tmp_path / "ddp", "trainer=ddp", "trainer.devices=2", "data.batch_size=4")
    command = [part for part in command if part not in ("trainer.max_epochs=4", "trainer.deterministic=true")] + [
        "trainer.max_epochs=1"
    ]
    env = subprocess_env(tmp_path, processes=2)
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").is_file(), "a second process ran"


def test_ckpt_path_last_without_an_earlier_run_is_an_error(tiny_cls_root, tmp_path):
    cfg = compose_config(
        "train", tiny_classification_overrides(tiny_cls_root) + ["ckpt_path=last"], tmp_path / "runs" / "first"
    )
    with pytest.raises(
        FileNotFoundError, match=r"ckpt_path=last: no earlier run under .*runs/ has checkpoints/last\.ckpt"
    ):
        train(cfg)
