"""Every run writes into a folder of its own, taken before Hydra records the run's settings there:
two runs started in the same second never share one, and a run refused a folder writes nothing into it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tasks.resume import RunLock

from .helpers import REPO_ROOT, tiny_classification_overrides

EARLIER = {"optimizer": {"lr": 0.0123}, "note": "an earlier run's record"}


def _workdir(tmp_path: Path) -> Path:
    """A user's working folder beside a clone: tools/ and configs/ as in the repository."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("tools", "configs"):
        (work / name).symlink_to(REPO_ROOT / name)
    return work


def _train(work: Path, overrides: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "tools/train.py", *overrides], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_run_whose_second_is_taken_gets_its_own_folder(tiny_cls_root, tmp_path):
    work = _workdir(tmp_path)
    runs = work / "outputs" / "classification"
    # Another run took the folder of every second in which this one can start.
    start = time.time()
    for second in range(-2, 120):
        name = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(start + second))
        (runs / name / ".hydra").mkdir(parents=True, exist_ok=True)
        (runs / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump(EARLIER))
    overrides = tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1"]
    done = _train(work, overrides, {**os.environ, "VISION_MNV2_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    mine = [p for p in runs.iterdir() if p.name.endswith("_1")]
    assert len(mine) == 1 and (mine[0] / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((mine[0] / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] != 0.0123
    untouched = [yaml.safe_load((p / ".hydra" / "config.yaml").read_text()) for p in runs.iterdir() if p != mine[0]]
    assert all(record == EARLIER for record in untouched), "no other run's record was overwritten"


def test_a_run_refused_a_folder_leaves_it_as_it_was(tiny_cls_root, tmp_path):
    work = _workdir(tmp_path)
    folder = tmp_path / "busy"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(EARLIER))
    lock = RunLock(folder)
    assert lock.acquire()  # another run trains into it
    try:
        overrides = tiny_classification_overrides(tiny_cls_root) + [f"hydra.run.dir={folder}"]
        done = _train(work, overrides, {**os.environ, "VISION_MNV2_CACHE": str(tmp_path / "cache")})
    finally:
        lock.release()
    assert done.returncode != 0
    assert f"another run is training into {folder}" in done.stderr
    assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text()) == EARLIER
    assert sorted(p.name for p in folder.iterdir()) == [".hydra", "train.lock"]
