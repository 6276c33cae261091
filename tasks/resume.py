"""Which earlier run a training run may continue, and the lock that keeps two runs out of one folder.

A run holds an exclusive ``flock`` on ``<run>/train.lock`` while it trains into that run's
``checkpoints/`` (its own, or the earlier run's it resumed). The kernel drops the lock when the
process ends, killed or not, so the lock file of a dead run never blocks anyone (forked children,
such as data-loader workers, let go of their copy at once: otherwise the lock would outlive a killed
run for as long as its orphaned workers do). ``ckpt_path=last``
continues the newest earlier run that is not running and whose settings (``<run>/.hydra/config.yaml``)
equal this run's, apart from the keys in ``resume_may_differ``; an explicit ``ckpt_path=<file>``
takes the file whatever its settings (logging what differs), but never one of a running run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vision_mnv2.files import atomic_write_text

__all__ = [
    "LOCK_FILE",
    "ResumeError",
    "RunLock",
    "RunStart",
    "claim_run_folder",
    "config_differences",
    "is_lead_process",
    "record_settings",
    "start_point",
]

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
CONFIG_FILE = ".hydra/config.yaml"
# Rank 0 hands the run it chose for ckpt_path=last to the DDP processes it launches: they would find
# it locked (by rank 0) and choose another.
_CHOSEN_ENV = "VISION_MNV2_RESUME_FROM"


class ResumeError(RuntimeError):
    """The run to continue is still running, or none of the earlier runs may be continued."""


# The locks this process holds. A forked child (a data-loader worker) shares the parent's open file
# and with it the flock, which would then stay held until the last worker exits, seconds after a
# killed run, so that ``ckpt_path=last`` right after a kill passed the killed run over. The child
# closes its copy, which leaves the parent's lock in place.
_held_locks: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _let_go_in_child() -> None:
    for lock in list(_held_locks):
        lock.release()  # closes the child's duplicate only: the parent's descriptor keeps the lock


os.register_at_fork(after_in_child=_let_go_in_child)


class RunLock:
    """The exclusive lock of a run folder, held by the process that trains into its checkpoints
    (not by the children it forks)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> bool:
        """Take the lock if no live process holds it; ``False`` if one does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # held open for as long as the lock
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        self._file = file
        _held_locks.add(self)
        return True

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it."""
        try:
            return self.path.read_text().strip() or "a process"
        except OSError:
            return "a process"

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None
        _held_locks.discard(self)


@dataclass
class RunStart:
    """Where a training run starts: the checkpoint it resumes (if any) and the run folder whose
    ``checkpoints/`` it writes, whose lock it holds until :meth:`release`."""

    checkpoint: str | None
    run_dir: Path
    lock: RunLock | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            os.environ.pop(_CHOSEN_ENV, None)


def is_lead_process() -> bool:
    """Rank 0, or no DDP at all, as the launch environment says (before Lightning sets up its ranks)."""
    return rank_zero_only.rank == 0


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        items = {}
        for key, value in node.items():
            items.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return items
    if isinstance(node, list):
        items = {}
        for index, value in enumerate(node):
            items.update(_flatten(value, f"{prefix}[{index}]"))
        return items if node else {prefix: []}
    return {prefix: node}


def config_differences(
    earlier: DictConfig, current: DictConfig, may_differ: Sequence[str] = (), added: Mapping[str, Any] | None = None
) -> list[str]:
    """``"key: earlier -> current"`` for every setting that differs, except keys in or under ``may_differ``.
    Compared as written (interpolations unresolved), so that a setting differs where the configs do.
    ``added``: settings the configs gained after ``earlier`` was recorded, with the value such a run
    had (a run recorded without the key is taken to have had it)."""
    old = _flatten(OmegaConf.to_container(earlier, resolve=False))
    new = _flatten(OmegaConf.to_container(current, resolve=False))
    for key, value in (added or {}).items():
        old.setdefault(key, value)

    def ignored(key: str) -> bool:
        return any(key == prefix or key.startswith((f"{prefix}.", f"{prefix}[")) for prefix in may_differ)

    absent = "(absent)"
    return [
        f"{key}: {old.get(key, absent)} -> {new.get(key, absent)}"
        for key in sorted(old.keys() | new.keys())
        if not ignored(key) and old.get(key, absent) != new.get(key, absent)
    ]


# Runs recorded before the network was composed from the backbone and head groups: the model section
# named a builder as its _target_ and copied group values in by interpolation.
MODELS = "vision_mnv2.models."
COMPOSED = MODELS + "compose_model"
# Builder arguments of the old model section that are backbone settings today.
MOVED_TO_BACKBONE = ("bottleneck_activation", "shortcut", "expansion_groups")


def in_composed_layout(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded run configuration in today's layout of the model section (the network composed from
    the backbone and head groups, vision_mnv2.models.compose_model), so that ``ckpt_path=last``
    compares what the run was, not how its configs were wired. Today's layout is returned as it is."""
    model = dict(recorded.get("model") or {})
    target = str(model.get("_target_", ""))
    if not target.startswith(MODELS) or target == COMPOSED:
        return recorded
    backbone = dict(recorded.get("backbone") or {})
    composed = {"_target_": COMPOSED, "builder": target[len(MODELS) :], "backbone": "${backbone}", "head": "${head}"}
    for key, value in model.items():
        if key == "_target_" or (isinstance(value, str) and value.startswith(("${backbone.", "${head."))):
            continue  # a group's value copied in: compared where the group holds it
        if key in MOVED_TO_BACKBONE:
            backbone[key] = value
        else:
            composed[key] = value
    # The old backbone default 32 was the classifier's stride and unused by SSDLite: the network's own,
    # as an unset stride is today. DeepLab set its stride explicitly.
    if backbone.get("output_stride") == 32 and not composed["builder"].startswith("deeplabv3_"):
        backbone["output_stride"] = None
    return {**recorded, "model": composed, "backbone": backbone}


def _differences(run_dir: Path, cfg: DictConfig) -> list[str] | None:
    """How ``cfg`` differs from the settings the run in ``run_dir`` recorded; ``None`` if it recorded none."""
    recorded = run_dir / CONFIG_FILE
    if not recorded.is_file():
        return None
    may_differ = [*cfg.get("resume_may_differ", []), "resume_may_differ", "resume_added_settings"]
    added = OmegaConf.to_container(cfg.get("resume_added_settings") or OmegaConf.create({}))
    earlier = OmegaConf.to_container(OmegaConf.load(recorded), resolve=False)
    return config_differences(OmegaConf.create(in_composed_layout(earlier)), cfg, may_differ, added)


# Folders this process locked before the run started (tasks.run_folder, as Hydra starts the run); a
# second flock by the same process on another descriptor of the same file would be refused.
_claimed: dict[Path, RunLock] = {}


def claim_run_folder(run_dir: str | os.PathLike) -> RunLock:
    """Lock this run's own folder now (before anything is written into it); refused with
    :class:`ResumeError` when another process trains into it."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _claimed and _claimed[run_dir]._file is not None:
        return _claimed[run_dir]
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise ResumeError(
            f"another run is training into {run_dir} ({lock.holder()}); give this run its own folder (hydra.run.dir)"
        )
    _claimed[run_dir] = lock
    return lock


def _claim(run_dir: Path, checkpoint: str | None, resuming_it: bool) -> RunStart:
    """Lock ``run_dir`` for this process: the earlier run being resumed, or this run's own folder."""
    held = _claimed.pop(run_dir.resolve(), None)
    if held is not None and held._file is not None:
        return RunStart(checkpoint, run_dir, held)
    lock = RunLock(run_dir)
    if not lock.acquire():
        if resuming_it:
            raise ResumeError(f"{run_dir} is still being trained ({lock.holder()}); wait for it to end or stop it")
        raise ResumeError(
            f"another run is training into {run_dir} ({lock.holder()}); give this run its own folder (hydra.run.dir)"
        )
    return RunStart(checkpoint, run_dir, lock)


def _run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder whose ``checkpoints/`` holds ``checkpoint``; ``None`` for a file elsewhere."""
    return checkpoint.parents[1] if checkpoint.parent.name == "checkpoints" else None


def _newest_resumable(cfg: DictConfig, output_dir: Path, lead: bool) -> RunStart:
    runs = output_dir.parent
    candidates = [p for p in runs.glob("*/checkpoints/last.ckpt") if p.parents[1].resolve() != output_dir]
    if not candidates:
        raise FileNotFoundError(f"ckpt_path=last: no earlier run under {runs}/ has checkpoints/last.ckpt")
    passed_over = []
    for checkpoint in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        run_dir = checkpoint.parents[1]
        differences = _differences(run_dir, cfg)
        if differences is None:
            reason = f"no recorded settings ({CONFIG_FILE}) to compare"
        elif differences:
            reason = f"settings differ ({'; '.join(differences)})"
        elif not lead:  # a DDP process other than rank 0, started outside Lightning: rank 0 holds the lock
            return RunStart(str(checkpoint), run_dir)
        else:
            lock = RunLock(run_dir)
            if lock.acquire():
                for skipped in passed_over:
                    log.warning("ckpt_path=last: passed over the newer %s", skipped)
                log.info("ckpt_path=last: resuming from %s", checkpoint)
                return RunStart(str(checkpoint), run_dir, lock)
            reason = f"still being trained ({lock.holder()})"
        passed_over.append(f"{run_dir}: {reason}")
    raise ResumeError(
        f"ckpt_path=last: no earlier run under {runs}/ may be continued: {'. '.join(passed_over)}. "
        "A run whose settings differ can be resumed by its file, ckpt_path=<run>/checkpoints/last.ckpt"
    )


def start_point(cfg: DictConfig) -> RunStart:
    """The checkpoint this training run resumes (``cfg.ckpt_path``; ``last`` means the newest earlier
    run of the task that may be continued, a sibling of this run's folder) and the run folder it
    writes checkpoints into, locked. Lightning's own ``"last"`` looks only in this run's new, empty
    folder and would silently start from scratch.

    Under DDP only the first process (rank 0) chooses and locks; the others take its choice."""
    ckpt_path = cfg.get("ckpt_path")
    output_dir = Path(cfg.paths.output_dir).resolve()
    lead = is_lead_process()
    if ckpt_path == "last":
        chosen = os.environ.get(_CHOSEN_ENV)
        if not lead and chosen:
            return RunStart(chosen, Path(chosen).parents[1])
        start = _newest_resumable(cfg, output_dir, lead)
        if lead:
            os.environ[_CHOSEN_ENV] = start.checkpoint  # inherited by the processes Lightning launches
        return start
    if not ckpt_path:
        return _claim(output_dir, None, resuming_it=False) if lead else RunStart(None, output_dir)
    if not Path(ckpt_path).expanduser().is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    run_dir = _run_dir_of(Path(ckpt_path).expanduser().resolve())
    if run_dir is None:  # a checkpoint file outside a run: this run's checkpoints go to its own folder
        return _claim(output_dir, ckpt_path, resuming_it=False) if lead else RunStart(ckpt_path, output_dir)
    differences = _differences(run_dir, cfg)
    if differences:
        log.warning("ckpt_path=%s: its run's settings differ from this run's: %s", ckpt_path, "; ".join(differences))
    elif differences is None:
        log.warning("ckpt_path=%s: its run recorded no settings (%s) to compare", ckpt_path, CONFIG_FILE)
    return _claim(run_dir, ckpt_path, resuming_it=True) if lead else RunStart(ckpt_path, run_dir)


def record_settings(cfg: DictConfig) -> None:
    """Save the run's settings where Hydra does (``<run>/.hydra/config.yaml``), for a run started
    through the Python API rather than ``tools/train.py``, so that it can be resumed by ``last`` too."""
    path = Path(cfg.paths.output_dir) / CONFIG_FILE
    if not path.is_file():
        atomic_write_text(path, OmegaConf.to_yaml(cfg))
