"""What the command-line tools do before Hydra composes their configuration. Imports nothing heavy
at the top: ``--help`` must answer without loading torch or Lightning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["TASK_CONFIGS", "with_task_from_checkpoint"]

# The task config (configs/task/) of each task.
TASK_CONFIGS = {"classification": "classification", "detection": "ssdlite", "segmentation": "deeplabv3"}


def _key(argument: str) -> str:
    return argument.split("=", 1)[0].lstrip("+~")


def with_task_from_checkpoint(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``task=<the checkpoint's task>`` added when it names a checkpoint and no task or
    experiment, so that Hydra composes the right task's defaults."""
    argv = list(argv)
    arguments = [a for a in argv[1:] if "=" in a]
    keys = {_key(a) for a in arguments}
    paths = [a.split("=", 1)[1] for a in arguments if _key(a) == "ckpt_path"]
    if "task" in keys or "experiment" in keys or not paths or not paths[-1] or paths[-1] == "last":
        return argv
    path = Path(paths[-1]).expanduser()
    try:
        if path.suffix.lower() == ".onnx":
            from vision_mnv2.pipelines.base import read_onnx_meta  # noqa: PLC0415

            task = read_onnx_meta(path)[0].task
        elif path.suffix.lower() == ".pte":
            from vision_mnv2.pipelines.base import read_executorch_description  # noqa: PLC0415

            task = read_executorch_description(path)[0].task
        else:
            from vision_mnv2.checkpoint import read_checkpoint  # noqa: PLC0415

            task = read_checkpoint(path)[1].task
    except Exception:
        return argv  # the tool reports an unreadable file with its own message
    return [*argv, f"task={TASK_CONFIGS[task]}"] if task in TASK_CONFIGS else argv
