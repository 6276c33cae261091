"""Training runs through every documented switch, and never ends as if it had worked when it did not."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tasks.datamodules import ClassificationDataModule
from tasks.resume import ResumeError, RunLock, start_point
from tasks.runner import build, train
from vision_mnv2.data import DatasetError
from vision_mnv2.files import temporary_name

from .helpers import compose_config, tiny_classification_overrides


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
    # Without the callbacks group the run still validates, and Lightning's own checkpoint callback
    # keeps the weights of the epoch's end: one epoch of 32 images in batches of 8.
    assert "val/top1" in result["metrics"] and Path(result["last_checkpoint"]).is_file()
    checkpoint = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 4


def test_a_training_set_smaller_than_one_batch_is_an_error(tiny_cls_root, tmp_path):
    """Training drops the incomplete last batch: 32 images in batches of 64 would train nothing, write no
    checkpoint and end as if all went well."""
    overrides = tiny_classification_overrides(tiny_cls_root) + ["data.batch_size=64"]
    message = r"training split has 32 sample\(s\): fewer than one batch of data\.batch_size=64"
    with pytest.raises(DatasetError, match=message):
        train(compose_config("train", overrides, tmp_path / "small"))
    assert not (tmp_path / "small" / "checkpoints").exists()

    root = tmp_path / "cls"
    shutil.copytree(tiny_cls_root, root)
    for victim in sorted((root / "train").rglob("*.jpg"))[:2]:
        victim.write_bytes(b"broken")
    overrides = tiny_classification_overrides(root) + ["data.batch_size=32", "data.skip_bad=true"]
    with pytest.raises(DatasetError, match=r"has 30 sample\(s\) once the 2 bad one\(s\) are left out: fewer than one"):
        train(compose_config("train", overrides, tmp_path / "skipped"))


def test_under_ddp_a_batch_is_counted_per_process(tiny_cls_root, monkeypatch):
    datamodule = ClassificationDataModule(tiny_cls_root, num_classes=4, image_size=64, batch_size=20, num_workers=0)
    datamodule.setup("fit")
    assert len(datamodule.train_dataloader()) == 1, "32 images give one batch of 20 in one process"
    monkeypatch.setattr("tasks.datamodules._distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *args: 0)
    with pytest.raises(DatasetError, match=r"32 sample\(s\), 16 per process on 2 processes: fewer than one batch"):
        datamodule.train_dataloader()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def tmpdir_on_another_filesystem(tmp_path, monkeypatch):
    """$TMPDIR on another filesystem than the run folder, where Lightning's staged move becomes a copy."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    folder = Path(tempfile.mkdtemp(dir=shm))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_checkpoints_are_replaced_atomically_even_on_a_full_disk(
    tiny_cls_root, tmp_path, monkeypatch, tmpdir_on_another_filesystem
):
    trainer = build(compose_config("train", tiny_classification_overrides(tiny_cls_root), tmp_path))[2]
    checkpoint_io = trainer.strategy.checkpoint_io
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, last)
    first = last.stat().st_ino
    checkpoint_io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.full((3,), 2.0)}}, last)
    assert last.stat().st_ino != first, "a new file renamed over the old one, not copied over it in place"

    def disk_full(obj, file):
        file.write(b"\0" * 100)  # part of the checkpoint reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_full)
        with pytest.raises(OSError, match="No space left on device"):
            checkpoint_io.save_checkpoint({"epoch": 3, "state_dict": {"w": torch.zeros(3)}}, last)
    previous = torch.load(last, map_location="cpu", weights_only=True)
    assert previous["epoch"] == 2 and torch.equal(previous["state_dict"]["w"], torch.full((3,), 2.0))
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"], "the temporary file is removed"
    assert not list(tmpdir_on_another_filesystem.iterdir())

    # A writer killed mid-write leaves its temporary; the next save removes it, not a live writer's.
    killed = last.parent / (temporary_name("last.ckpt").replace(f"@{os.getpid()}@", f"@{_dead_pid()}@") + "1a2b")
    live = last.parent / (temporary_name("epoch_000.ckpt") + "5e6f")  # this process: alive
    killed.write_bytes(b"\0" * 10)
    live.write_bytes(b"\0" * 10)
    checkpoint_io.save_checkpoint({"epoch": 4}, last)
    assert not killed.exists() and live.exists()


def test_a_run_ends_with_a_summary_line_and_its_speed(tiny_cls_root, tmp_path, caplog):
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1"]
    with caplog.at_level(logging.INFO, logger="tasks.runner"):
        result = train(compose_config("train", overrides, tmp_path))
    written = json.loads((tmp_path / "train_metrics.json").read_text())
    assert written["wall_time_s"] == result["wall_time_s"] > 0
    # one epoch of 32 training images
    assert written["images_per_s"] * written["wall_time_s"] == pytest.approx(32, rel=0.01)
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Training done:")]
    # what the run's length bought: one epoch of 4 steps of 8 images
    assert written["steps"] == 4 and written["epochs"] == 1 and written["images"] == 32
    assert written["step_budget"] is None
    assert summary.startswith("Training done: 4 steps (1.00 epochs, 32 images) in ")
    best = result["best_score"]["val/top1"]
    assert f"best checkpoint {result['best_checkpoint']} (val/top1 {best:.4f})" in summary
    assert summary.endswith(f"metrics in {tmp_path / 'train_metrics.json'}")
    assert f"({written['images_per_s']:.1f} images/s)" in summary


def test_ckpt_path_last_continues_only_a_run_with_the_same_settings(tiny_cls_root, tmp_path, caplog):
    runs = tmp_path / "runs"
    common = tiny_classification_overrides(tiny_cls_root) + ["logger=none"]
    train(compose_config("train", common + ["trainer.max_epochs=1"], runs / "a"))
    last = runs / "a" / "checkpoints" / "last.ckpt"

    other_lr = common + ["optimizer.lr=0.01", "trainer.max_epochs=2"]
    with pytest.raises(ResumeError, match=rf"{runs / 'a'}: settings differ \(optimizer\.lr: 0\.004 -> 0\.01\)"):
        train(compose_config("train", other_lr + ["ckpt_path=last"], runs / "b"))
    assert not (runs / "b" / "train_metrics.json").exists()

    # More epochs is not another setting.
    train(compose_config("train", common + ["trainer.max_epochs=2", "ckpt_path=last"], runs / "c"))
    assert torch.load(last, weights_only=True)["epoch"] == 1

    # A file named explicitly is resumed whatever its run's settings; what differs is logged.
    with caplog.at_level(logging.WARNING, logger="tasks.resume"):
        train(compose_config("train", other_lr[:-1] + ["trainer.max_epochs=3", f"ckpt_path={last}"], runs / "d"))
    assert "its run's settings differ from this run's: optimizer.lr: 0.004 -> 0.01" in caplog.text
    assert torch.load(last, weights_only=True)["epoch"] == 2


class _TryToJoinMidway(Callback):
    """While its run trains, tries what another run would: resume it, or train into its folder."""

    def __init__(self, others: dict) -> None:
        self.others = others
        self.outcomes: dict[str, str] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != 1:  # by now epoch 0's last.ckpt is written
            return
        for name, cfg in self.others.items():
            try:
                start_point(cfg).release()
                self.outcomes[name] = "allowed"
            except ResumeError as error:
                self.outcomes[name] = str(error)


def test_a_run_that_is_still_training_is_never_resumed(tiny_cls_root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    common = tiny_classification_overrides(tiny_cls_root) + ["logger=none", "trainer.max_epochs=2"]
    last = runs / "a" / "checkpoints" / "last.ckpt"
    probe = _TryToJoinMidway(
        {
            "last": compose_config("train", common + ["ckpt_path=last"], runs / "b"),
            "by file": compose_config("train", common + [f"ckpt_path={last}"], runs / "b"),
            "same folder": compose_config("train", common, runs / "a"),
        }
    )

    def build_with_probe(cfg, *args, **kwargs):
        datamodule, module, trainer = build(cfg, *args, **kwargs)
        trainer.callbacks.append(probe)
        return datamodule, module, trainer

    monkeypatch.setattr("tasks.runner.build", build_with_probe)
    train(compose_config("train", common, runs / "a"))
    holder = rf"\(pid {os.getpid()} on .*\)"
    assert re.search(
        rf"under {runs}/ may be continued: {runs / 'a'}: still being trained {holder}", probe.outcomes["last"]
    )
    assert re.match(rf"{runs / 'a'} is still being trained {holder}", probe.outcomes["by file"])
    assert probe.outcomes["same folder"].startswith(f"another run is training into {runs / 'a'}")
    # Once it has ended (or been killed: the kernel drops the lock), it may be resumed.
    monkeypatch.undo()
    start = start_point(compose_config("train", common + ["ckpt_path=last"], runs / "b"))
    start.release()
    assert start.checkpoint == str(last)


def test_a_forked_child_does_not_keep_the_lock_of_its_run(tmp_path):
    """A data-loader worker is a forked child of the training process: when the run is killed, its
    lock must go with it, not live on in the orphaned workers (``ckpt_path=last`` right after a
    kill would pass the killed run over)."""
    import multiprocessing

    run_lock = RunLock(tmp_path)
    assert run_lock.acquire()
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    child = fork.Process(target=_signal_then_sleep, args=(started, 60), daemon=True)
    child.start()
    try:
        assert started.wait(30), "the child did not start"
        assert not RunLock(tmp_path).acquire(), "the parent holds the lock while it runs"
        run_lock.release()  # what the parent's death does; the child is still alive
        assert child.is_alive()
        other = RunLock(tmp_path)
        assert other.acquire(), "the forked child kept the lock after its parent let go"
        other.release()
    finally:
        child.kill()
        child.join()


def _signal_then_sleep(started, seconds: float) -> None:
    started.set()
    time.sleep(seconds)
