"""What every backbone here offers the heads and fine-tuning: named feature taps and frozen stages.

:class:`FeatureBackbone` is the part MobileNetV2 and MobileNetV1 share. A subclass describes its
layers (the modules, the stage each belongs to, the taps they offer) and how an input runs through
them (:meth:`FeatureBackbone.layer_outputs`); the base owns the rest:

* ``features``: an ``nn.Sequential`` whose entry 0 is the stem conv, so weight files find a backbone
  by its stem key ``features.0.0.weight``;
* ``feature_info``: timm-style taps (channels and reduction), so heads size themselves;
* ``out_features``: the taps ``forward`` returns, by name, checked against ``feature_info``;
* ``drop_unused``: the layers after the deepest requested tap left out, so they hold no parameters;
* torchvision's weight initialisation, and stage-wise freezing for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .normalization import InputNormalization, Normalization

__all__ = [
    "VALID_OUTPUT_STRIDES",
    "BackboneClassifier",
    "FeatureBackbone",
    "FeatureInfo",
    "check_width_and_output_stride",
    "strides_for_output_stride",
]

VALID_OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """One named feature tap: what a head needs to size itself."""

    name: str
    channels: int
    reduction: int  # input size / feature size: with dilation it stops growing at the output stride
    module_index: int  # index into ``backbone.features``


def check_width_and_output_stride(width_mult, output_stride) -> None:
    """The two arguments every backbone takes, checked before anything is built."""
    if not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    if output_stride not in VALID_OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {VALID_OUTPUT_STRIDES}, got {output_stride!r}")


def strides_for_output_stride(
    strides: Sequence[int], output_stride: int, reduction: int = 2
) -> list[tuple[int, int, int]]:
    """Each layer's ``(stride, dilation, reduction after it)`` for layers of the given nominal
    ``strides`` that follow a stem of ``reduction``.

    Dense prediction keeps the resolution at ``output_stride`` (DeepLab's and TF-slim's rule): a
    layer that would reduce past it keeps stride 1 and the dilation it had, and every later layer
    dilates by the stride skipped. The weights are the same at every output stride.
    """
    schedule = []
    dilation = 1
    for stride in strides:
        layer_dilation = dilation
        if stride > 1 and reduction >= output_stride:
            stride, dilation = 1, dilation * stride
        else:
            reduction *= stride
        schedule.append((stride, layer_dilation, reduction))
    return schedule


class FeatureBackbone(nn.Module):
    """Base of the backbones: the layers with their taps, stages and initialisation.

    Args:
        layers: the network in order; ``layers[0]`` is the stem conv.
        stages: the stage of each layer (0 the stem; :meth:`freeze` counts in stages). The last
            stage's number is ``num_stages``.
        feature_info: every tap the layers offer, in network order; the last is the final layer's
            output (the default tap, and the width a classifier pools: ``last_channels``).
        out_features: the tap names :meth:`forward` returns; ``None``: the final layer's only.
        drop_unused: leave out the layers after the deepest requested tap; their taps stay listed
            in ``feature_info``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        stages: Sequence[int],
        feature_info: Sequence[FeatureInfo],
        out_features: Sequence[str] | None = None,
        drop_unused: bool = False,
    ) -> None:
        super().__init__()
        if len(stages) != len(layers):
            raise ValueError(f"{len(layers)} layers but {len(stages)} stages")
        self.feature_info: dict[str, FeatureInfo] = {info.name: info for info in feature_info}
        self.last_channels = feature_info[-1].channels
        self.out_features: tuple[str, ...] = tuple(out_features) if out_features else (feature_info[-1].name,)
        unknown = [name for name in self.out_features if name not in self.feature_info]
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; available: {list(self.feature_info)}")
        self.num_stages = max(stages)
        kept = max(self.feature_info[name].module_index for name in self.out_features) + 1 if drop_unused else None
        self.features = nn.Sequential(*layers[:kept])
        self.layer_stages: tuple[int, ...] = tuple(stages[:kept])
        self._init_weights()

    @property
    def out_channels(self) -> dict[str, int]:
        return {name: self.feature_info[name].channels for name in self.out_features}

    def layer_outputs(self, x: Tensor, taps: frozenset[str]) -> Iterator[tuple[str, Tensor]]:
        """Run ``x`` through ``features`` one layer at a time, yielding ``(tap name, tensor)`` for
        every tap reached: always each layer's output, and the taps inside a layer where ``taps``
        (the requested names) asks for them. :meth:`forward` stops asking after the last tap it needs."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return the requested taps by name, running only as many layers as they need."""
        wanted = frozenset(self.out_features)
        found: dict[str, Tensor] = {}
        for name, tensor in self.layer_outputs(x, wanted):
            if name in wanted:
                found[name] = tensor
                if len(found) == len(wanted):
                    break
        return {name: found[name] for name in self.out_features}

    def freeze(self, stages: bool | int = True, frozen_bn: bool = False) -> None:
        """Stop training the first layers, for fine-tuning on little data.

        ``stages``: ``True`` freezes the whole backbone, ``False`` / -1 nothing, ``N >= 0`` the stem
        and the first N stages (as mmdetection's ``frozen_stages``). Frozen layers keep their
        batch-norm statistics too. ``frozen_bn`` keeps the statistics of *every* batch-norm layer of
        the backbone fixed while the weights still train (mmdetection's ``norm_eval``): small
        fine-tuning batches then do not overwrite ImageNet's statistics.
        """
        if isinstance(stages, bool):
            last_frozen = self.num_stages if stages else -1
        elif isinstance(stages, int) and -1 <= stages <= self.num_stages:
            last_frozen = stages
        else:
            raise ValueError(
                f"freeze_backbone must be true, false or a stage count -1..{self.num_stages}, got {stages!r}"
            )
        self.frozen_layers = [i for i, stage in enumerate(self.layer_stages) if stage <= last_frozen]
        self.frozen_bn = bool(frozen_bn)
        for index in self.frozen_layers:
            for param in self.features[index].parameters():
                param.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> FeatureBackbone:
        super().train(mode)
        if mode:
            for index in getattr(self, "frozen_layers", ()):
                self.features[index].eval()
            if getattr(self, "frozen_bn", False):
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a model built here trains like torchvision's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class BackboneClassifier(nn.Module):
    """An ImageNet classifier on a backbone with one tap: input normalisation, the backbone, global
    average pool, dropout, linear. Takes RGB images in [0, 1]. The classifier keeps torchvision's
    layout (Dropout at index 0, Linear at 1), so its weight files load by name."""

    def __init__(self, backbone: FeatureBackbone, num_classes: int, dropout: float, normalization=None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        super().__init__()
        self.normalize = InputNormalization(normalization)
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(backbone.last_channels, num_classes))
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    @property
    def normalization(self) -> Normalization:
        return self.normalize.normalization

    def forward(self, x: Tensor) -> Tensor:
        (features,) = self.backbone(self.normalize(x)).values()
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        return self.classifier(pooled)
