"""The builders by name, and what each built model records about its own construction.

A model built by a registered builder carries ``model.build_config``: the builder's name, its task,
and every argument it was called with (defaults included) as plain values. That is what a
checkpoint or an export stores so that the same network can be rebuilt from the file alone, the
way timm's ``pretrained_cfg`` and Hugging Face's ``config.json`` do. Arguments that only say where
weights come from or how training treats them (``weights``, ``backbone_weights``,
``freeze_backbone``, ``frozen_bn``) are not part of the network and are not recorded.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["BUILDERS", "TASKS", "build_model", "build_config", "register_model", "to_jsonable"]

TASKS = ("classification", "detection", "segmentation")
# Where weights come from and how training treats them: not a property of the network.
NOT_RECORDED = frozenset({"weights", "backbone_weights", "freeze_backbone", "frozen_bn"})

BUILDERS: dict[str, tuple[str, Callable[..., nn.Module]]] = {}


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON-like Python values (dicts, lists, str, int, float, bool, None), so that it
    loads with ``torch.load(weights_only=True)`` and writes into ONNX metadata. Config containers
    (mappings, sequences) and objects with ``as_dict()`` are converted; anything else is an error."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "as_dict"):
        return to_jsonable(value.as_dict())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"{value!r} ({type(value).__name__}) cannot be recorded as a plain value")


def register_model(name: str, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name`` for ``task``; the models it builds record ``build_config``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        signature = inspect.signature(builder)

        @functools.wraps(builder)
        def build(*args, **kwargs) -> nn.Module:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            model = builder(*bound.args, **bound.kwargs)
            recorded: dict[str, Any] = {}
            for key, value in bound.arguments.items():
                if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)  # extra keywords passed through to torchvision
                elif key not in NOT_RECORDED:
                    recorded[key] = value
            # The resolved statistics, not the preset name alone: readable without this project.
            if hasattr(model, "normalization"):
                recorded["normalization"] = model.normalization.as_dict()
            model.build_config = {"builder": name, "task": task, "args": to_jsonable(recorded)}
            return model

        BUILDERS[name] = (task, build)
        return build

    return decorate


def build_model(builder: str, args: Mapping[str, Any] | None = None, **changes: Any) -> nn.Module:
    """The network of a recorded ``build_config`` (``builder`` and its ``args``), with ``changes``
    applied to the arguments. Only registered builders can be named, so a file cannot make this
    call anything else."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown model builder {builder!r}; known: {sorted(BUILDERS)}")
    _, function = BUILDERS[builder]
    accepted = inspect.signature(function).parameters
    takes_extra = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs = {**dict(args or {}), **changes}
    unknown = [key for key in kwargs if key not in accepted and not takes_extra]
    if unknown:
        raise ValueError(f"{builder} takes no argument(s) {unknown}")
    return function(**kwargs)


def build_config(model: nn.Module) -> dict[str, Any] | None:
    """``model.build_config`` when a registered builder made it, else ``None``."""
    config = getattr(model, "build_config", None)
    return dict(config) if isinstance(config, Mapping) else None
