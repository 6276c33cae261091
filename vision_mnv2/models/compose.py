"""A task's network composed from a backbone's settings and a head's settings, each kept whole.

The configs keep the backbone (``backbone/*.yaml``) and the head (``head/*.yaml``) as groups of their
own, as lightning-hydra-template keeps ``model.net`` apart from the module around it. The task says
which network it builds (``ssdlite_mobilenet_v2``: its builder) and passes both groups whole, so a
setting added to a group reaches the builder without being copied into every task:

    compose_model("ssdlite_mobilenet_v2", backbone={"width_mult": 0.5, ...},
                  head={"score_thresh": 0.01, ...}, num_classes=3, image_size=320)

builds what ``ssdlite_mobilenet_v2(width_mult=0.5, score_thresh=0.01, num_classes=3,
image_size=320)`` builds: the same network, the same ``build_config`` record.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from .registry import BUILDERS, build_model

__all__ = ["builder_settings", "compose_model"]

# What a backbone group says that is not a builder argument: which network (the builder's name
# carries it) and where its weights come from (the builders' ``backbone_weights``).
NOT_ARGUMENTS = frozenset({"name"})
RENAMED = {"weights": "backbone_weights"}


def builder_settings(builder: str) -> set[str]:
    """The arguments ``builder`` names in its signature (not what it passes on to torchvision)."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown model builder {builder!r}; known: {sorted(BUILDERS)}")
    parameters = inspect.signature(BUILDERS[builder][1]).parameters.values()
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}


def _arguments(group: str, settings: Mapping[str, Any] | None, builder: str, taken: set[str]) -> dict[str, tuple]:
    """``{builder argument: (value, the user's key)}`` of one group's settings."""
    arguments: dict[str, tuple] = {}
    for key, value in dict(settings or {}).items():
        if group == "backbone" and key in NOT_ARGUMENTS:
            continue
        argument = RENAMED.get(key, key) if group == "backbone" else key
        if value is None and group == "backbone":
            continue  # the network's own: e.g. the output stride, 32 for a classifier and SSDLite
        if argument not in taken:
            raise ValueError(
                f"{group}.{key}={value!r}: the network {builder} has no setting {key!r}; "
                f"it takes {', '.join(sorted(taken))}"
            )
        arguments[argument] = (value, f"{group}.{key}")
    return arguments


def compose_model(
    builder: str,
    backbone: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
    **arguments: Any,
) -> nn.Module:
    """The network of the registered ``builder`` from the backbone's settings, the head's settings and
    the task's own ``arguments`` (classes, input size, weights, fine-tuning). An unset backbone
    setting (None) is left to the builder's default; a setting the builder does not take is an
    error, and so is one given twice, so nothing is dropped unseen. The backbone's ``weights`` are the builder's ``backbone_weights``; its ``name`` is in
    ``builder`` already."""
    taken = builder_settings(builder)
    combined = {key: (value, f"model.{key}") for key, value in arguments.items()}
    for group, settings in (("backbone", backbone), ("head", head)):
        part = _arguments(group, settings, builder, taken)
        twice = sorted(set(part) & set(combined))
        if twice:
            given = "; ".join(f"{part[key][1]} and {combined[key][1]}" for key in twice)
            raise ValueError(f"{builder}: {given} set the same argument; set it once")
        combined.update(part)
    return build_model(builder, {key: value for key, (value, _) in combined.items()})
