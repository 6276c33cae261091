"""Checkpoints that describe their model: read, build, write.

A checkpoint of this project is a ``torch.save`` file holding ``state_dict`` (the network's tensors
under ``model.``, as the Lightning task modules hold them) and, under ``"vision_mnv2"``, a
:class:`ModelMeta` as plain values: the task, the builder and every argument it was built with, the
input normalisation and preprocessing, class names and dataset category ids, the project version,
and where the model came from. Everything loads with ``torch.load(weights_only=True)``: a
checkpoint is data, never code, and the builder is looked up by name among this project's
registered builders, never imported from a name in the file.

Checkpoints written before models described themselves (project version 0.1) have class names but
no builder: :func:`read_checkpoint` returns their weights with ``meta.builder`` unset, and the
caller builds the network from its configuration as before (the tools do, with a warning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .files import UnreadableFile, atomic_write, load_torch_file
from .models.registry import BUILDERS, TASKS, build_config, build_model, to_jsonable

__all__ = [
    "FORMAT_VERSION",
    "META_KEY",
    "CheckpointError",
    "ModelMeta",
    "load_model",
    "project_version",
    "read_checkpoint",
    "save_model",
]

log = logging.getLogger(__name__)

META_KEY = "vision_mnv2"
FORMAT_VERSION = 1
MODEL_PREFIX = "model."  # the Lightning task modules hold their network as ``self.model``


def project_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("vision-mnv2")
    except Exception:  # running from a source tree that was never installed
        return "unknown"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this project, or not of the expected task; the
    message names the file and the reason."""


@dataclass
class ModelMeta:
    """What a trained model is, apart from its weights (the ``"vision_mnv2"`` entry of a checkpoint
    and the metadata of an export)."""

    task: str | None = None
    builder: str | None = None
    builder_args: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    version: str | None = None
    format: int = FORMAT_VERSION
    # Where the model came from: run name, epoch, step, the data configuration, a source file.
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelMeta:
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def of_model(cls, model: nn.Module, **fields: Any) -> ModelMeta:
        """The description of a model built by a registered builder, with further fields (class
        names, preprocessing, training) given."""
        config = build_config(model)
        if config is None:
            raise ValueError(f"{type(model).__name__} was not built by a registered builder; it cannot describe itself")
        args = dict(config["args"])
        return cls(
            task=config["task"],
            builder=config["builder"],
            builder_args=args,
            normalization=args.get("normalization"),
            version=project_version(),
            **fields,
        )

    def as_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    @property
    def num_classes(self) -> int | None:
        return self.builder_args.get("num_classes")

    @property
    def input_size(self) -> list[int] | None:
        """``[height, width]`` the model is fed, or ``None`` when it takes any size."""
        return self.preprocessing.get("input_size")


def _refuse(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"not a checkpoint of this project: {path}: {reason}")


def _torch_load(path: Path) -> Any:
    try:
        return load_torch_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist") from None
    except UnreadableFile as error:
        raise _refuse(path, str(error)) from None


def _infer_task(state_dict: Mapping[str, Tensor]) -> str | None:
    """The task of a checkpoint without metadata, from its tensor names."""
    if any(k.startswith("head.classification_head.") for k in state_dict):
        return "detection"
    if any(k.startswith("aspp.") for k in state_dict):
        return "segmentation"
    if any(k.startswith("classifier.") for k in state_dict):
        return "classification"
    return None


def read_checkpoint(path: str | os.PathLike, expected_task: str | None = None) -> tuple[dict[str, Tensor], ModelMeta]:
    """The network's state dict and the model's description from a checkpoint of this project.

    Raises :class:`CheckpointError` with the file and the reason when the file is missing, empty,
    not a PyTorch file, holds pickled objects, has no network weights, or is a model of another
    task than ``expected_task``.
    """
    path = Path(path).expanduser()
    content = _torch_load(path)
    if not isinstance(content, Mapping):
        raise _refuse(path, f"it holds a {type(content).__name__}, not a checkpoint dictionary")
    state = content.get("state_dict", content)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        keys = ", ".join(sorted(map(str, content))[:8])
        raise _refuse(path, f"no network weights in it (top-level entries: {keys or 'none'})")
    if any(str(k).startswith(MODEL_PREFIX) for k in state):
        state = {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    raw_meta = content.get(META_KEY)
    meta = ModelMeta.from_dict(raw_meta if isinstance(raw_meta, Mapping) else None)
    if meta.task is None:
        meta.task = _infer_task(state)
    if meta.task is not None and meta.task not in TASKS:
        raise _refuse(path, f"unknown task {meta.task!r} in its metadata")
    if meta.builder is not None and meta.builder not in BUILDERS:
        raise _refuse(path, f"unknown model builder {meta.builder!r} in its metadata (known: {sorted(BUILDERS)})")
    if expected_task is not None and meta.task is not None and meta.task != expected_task:
        raise CheckpointError(f"this checkpoint is a {meta.task} model; you asked for {expected_task}: {path}")
    return dict(state), meta


def load_model(
    path: str | os.PathLike, expected_task: str | None = None, **changes: Any
) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the checkpoint's network from its own description and load its weights (eval mode).

    ``changes``: builder arguments to set differently (an input size, post-processing thresholds,
    ``expansion_groups``); the caller decides which changes make sense (see
    :func:`vision_mnv2.pipelines.load`). Returns the model and the checkpoint's metadata with the
    changes applied.
    """
    path = Path(path).expanduser()
    state, meta = read_checkpoint(path, expected_task)
    if meta.builder is None and meta.task is None:
        raise _refuse(path, "no model description, and its weights are not those of a network of this project")
    if meta.builder is None:
        raise CheckpointError(
            f"{path} was written before checkpoints described their model (vision-mnv2 0.1): it has weights but "
            "not the builder arguments, so the network must be built from a configuration (give the task's "
            "overrides to the tool, as for that version)"
        )
    model = build_model(meta.builder, meta.builder_args, **changes)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise _refuse(
            path,
            f"its weights do not fit its own description ({meta.builder}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {mismatched[:5]}",
        )
    model.load_state_dict(state)
    model.eval()
    if changes:
        meta.builder_args = {**meta.builder_args, **to_jsonable(changes)}
    return model, meta


def save_model(path: str | os.PathLike, model: nn.Module, meta: ModelMeta) -> Path:
    """Write ``model``'s weights and ``meta`` as a checkpoint of this project (the layout the
    training runs write, without optimiser state), atomically (:func:`vision_mnv2.files.atomic_write`)."""
    path = Path(path).expanduser()
    payload = {
        "state_dict": {MODEL_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        META_KEY: meta.as_dict(),
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return path
