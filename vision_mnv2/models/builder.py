"""One assembly path for every registered model, as timm's ``build_model_with_cfg``.

Each registered builder (``mobilenet_v2``, ``ssdlite_mobilenet_v1``, ...) declares its arguments in
its signature, the record that checkpoints store, and hands all of them to
:func:`build_model_with_cfg` with the backbone class and the model to put around it. The arguments
are routed by name: each goes to every part whose signature names it (the backbone's constructor,
the model's), and the ones about weights and inference are applied here. So a backbone argument
(width, output stride, TF padding, channel rounding, the ablation switches) is written once, in the
builder's signature, and no builder forwards it by hand.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..layers import NormLayer
from .backbone import FeatureBackbone
from .memory_efficient import set_expansion_groups
from .weights import load_backbone_weights, load_weights

__all__ = ["build_model_with_cfg", "prepare_for_training"]

# The builder arguments applied here, once the network stands.
ASSEMBLY_ARGUMENTS = frozenset({"weights", "backbone_weights", "freeze_backbone", "frozen_bn", "expansion_groups"})


def _parameters(part: Callable[..., Any]) -> set[str]:
    """The names ``part`` takes by keyword (for a class: its constructor's)."""
    return {
        name
        for name, p in inspect.signature(part).parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def build_model_with_cfg(
    backbone_cls: type[FeatureBackbone],
    model_cls: Callable[..., nn.Module],
    arguments: Mapping[str, Any],
    *,
    out_features: Sequence[str] | None = None,
    drop_unused: bool = False,
    norm_layer: NormLayer = nn.BatchNorm2d,
    model_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build ``model_cls(backbone, ...)`` on a ``backbone_cls`` from a builder's ``arguments``.

    Args:
        backbone_cls: the feature backbone; it gets the arguments its constructor names, and
            ``out_features``, ``drop_unused`` and ``norm_layer``: how this model uses it.
        model_cls: the model around the backbone (a class or function taking the backbone first);
            it gets the arguments it names, and ``model_kwargs``.
        arguments: every argument of the registered builder, by name (its ``locals()`` on entry).
            ``weights``, ``backbone_weights``, ``freeze_backbone``, ``frozen_bn`` are applied to the
            built model (:func:`prepare_for_training`), then ``expansion_groups`` (memory-efficient
            inference). An argument that reaches no part is a mistake in the builder: ``TypeError``.
    """
    backbone_parameters = _parameters(backbone_cls) - {"out_features", "drop_unused", "norm_layer"}
    model_parameters = _parameters(model_cls) - {"backbone"}
    unused = set(arguments) - backbone_parameters - model_parameters - ASSEMBLY_ARGUMENTS
    if unused:
        raise TypeError(f"builder argument(s) {sorted(unused)} reach neither {backbone_cls.__name__} nor the model")
    backbone = backbone_cls(
        **{name: value for name, value in arguments.items() if name in backbone_parameters},
        out_features=out_features,
        drop_unused=drop_unused,
        norm_layer=norm_layer,
    )
    model = model_cls(
        backbone,
        **{name: value for name, value in arguments.items() if name in model_parameters},
        **(model_kwargs or {}),
    )
    prepare_for_training(
        model,
        backbone,
        weights=arguments.get("weights"),
        backbone_weights=arguments.get("backbone_weights"),
        freeze_backbone=arguments.get("freeze_backbone", False),
        frozen_bn=arguments.get("frozen_bn", False),
    )
    if arguments.get("expansion_groups") is not None:
        set_expansion_groups(model, arguments["expansion_groups"])
    return model


def prepare_for_training(
    model: nn.Module,
    backbone: FeatureBackbone,
    *,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
) -> None:
    """What every builder does once the network stands: the backbone's weights, then the whole
    model's (which override them where both are given), then the backbone's frozen stages and
    batch-norm statistics (``backbone.freeze``)."""
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    if weights is not None:
        load_weights(model, weights)
    if freeze_backbone is not False or frozen_bn:
        backbone.freeze(freeze_backbone, frozen_bn)
