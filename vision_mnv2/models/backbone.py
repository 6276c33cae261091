"""What every backbone here offers the heads and fine-tuning: named feature taps and frozen stages.

:class:`FeatureBackbone` is the part MobileNetV2 and MobileNetV1 share: ``features`` (an
``nn.Sequential`` whose entry 0 is the stem conv, so weight files find a backbone by its stem key
``features.0.0.weight``), ``feature_info`` (timm-style taps: channels and reduction, so heads size
themselves), ``out_features`` (the taps ``forward`` returns, by name) and stage-wise freezing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .normalization import InputNormalization, Normalization

__all__ = ["BackboneClassifier", "FeatureBackbone", "FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """One named feature tap: what a head needs to size itself."""

    name: str
    channels: int
    reduction: int  # input size / feature size: with dilation it stops growing at the output stride
    module_index: int  # index into ``backbone.features``


class FeatureBackbone(nn.Module):
    """Base of the backbones: subclasses build ``features``, ``feature_info`` and ``out_features``
    and say which stage each entry of ``features`` belongs to (:meth:`stage_of_layer`, with
    ``num_stages`` the last stage's number; stage 0 is the stem)."""

    features: nn.Sequential
    feature_info: dict[str, FeatureInfo]
    out_features: tuple[str, ...]
    num_stages: int

    @property
    def out_channels(self) -> dict[str, int]:
        return {name: self.feature_info[name].channels for name in self.out_features}

    def stage_of_layer(self) -> list[int]:
        raise NotImplementedError

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
        self.frozen_layers = [i for i, stage in enumerate(self.stage_of_layer()) if stage <= last_frozen]
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
