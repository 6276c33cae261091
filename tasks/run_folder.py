"""Each run gets a folder of its own before Hydra writes anything into it.

Hydra names a run's folder from the time to the second and saves the run's settings
(``.hydra/config.yaml``) there before the task starts. Two runs started in the same second would share
the folder: the second's settings would overwrite the first's record, and ``ckpt_path=last`` would
later compare against the wrong settings. This Hydra callback runs before that save: a folder named
by the default pattern is created with ``mkdir``, which only one process can win, and a run that
loses takes the next free name (``<time>_1``, ``<time>_2``, ...). A folder given on purpose
(``hydra.run.dir=...``) keeps its name; a training run takes the folder's lock there and then, so a
run refused because another trains into that folder has written nothing into it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

__all__ = ["ClaimRunFolder"]

# Launchers of the extra processes of a DDP run set these; those processes use the first one's folder.
_RANK_VARIABLES = ("LOCAL_RANK", "RANK", "SLURM_PROCID")


def _is_extra_process() -> bool:
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in _RANK_VARIABLES)


def _given_explicitly(config: DictConfig) -> bool:
    overrides = list(config.hydra.overrides.get("hydra", [])) + list(config.hydra.overrides.get("task", []))
    return any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in overrides)


def _new_folder(path: Path) -> Path:
    """``path``, or the first of ``path_1``, ``path_2``, ... that this process could create."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}_{number}")


class ClaimRunFolder(Callback):
    """The Hydra callback (``hydra.callbacks`` in configs/hydra/default.yaml); see the module."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_extra_process():
            return
        folder = Path(str(config.hydra.run.dir)).absolute()
        if not _given_explicitly(config):
            folder = _new_folder(folder)
        elif config.hydra.job.name == "train":
            from .resume import ResumeError, claim_run_folder  # noqa: PLC0415  (loads Lightning)

            try:
                claim_run_folder(folder)
            except ResumeError as error:
                # Hydra turns a callback's exceptions into warnings and carries on (writing into the
                # folder); leaving now is what refuses the folder.
                raise SystemExit(f"Error: {error}") from None
        with read_write(config), open_dict(config):
            config.hydra.run.dir = str(folder)
