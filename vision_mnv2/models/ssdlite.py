"""SSDLite on MobileNetV2 (paper section 6.2), as TF's Object Detection API builds it.

torchvision supplies the detector (``SSD``: matching, box coding, hard negative mining, NMS), the
separable prediction head (``SSDLiteHead``) and the extra-layer block; its feature extractor fits
MobileNetV3's layout, so the MobileNetV2 extractor and TF's anchor layout are written here.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init
from torchvision.ops import clip_boxes_to_image, sigmoid_focal_loss

from ..layers import NormLayer, batch_norm, make_divisible
from .backbone import FeatureBackbone
from .builder import build_model_with_cfg
from .detection_postprocess import multiclass_nms
from .mobilenetv1 import MobileNetV1Backbone
from .mobilenetv2 import MobileNetV2Backbone
from .normalization import resolve_normalization
from .registry import register_model
from .ssd_tf_loss import TFArgMaxMatcher, TFMultipleGridAnchorGenerator, TFSSDLoss

__all__ = [
    "FocalLossSSD",
    "SSDLite",
    "SSDLiteExtractor",
    "TFLossSSD",
    "TFSSDAnchorGenerator",
    "ssdlite_mobilenet_v1",
    "ssdlite_mobilenet_v2",
]

# The two backbone maps (stride 16 and 32) of TF OD API's `ssdlite_mobilenet_v2_coco` (layer 15's
# expansion, 576 channels, and layer 19, 1280) and `ssdlite_mobilenet_v1_coco` (its `ssd_mobilenet_v1`
# feature extractor: 512 and 1024 channels).
BACKBONE_TAPS = {
    MobileNetV2Backbone: ("layer15/expansion", "layer19"),
    MobileNetV1Backbone: ("Conv2d_11_pointwise", "Conv2d_13_pointwise"),
}
# Depths of the 4 extra layers.
EXTRA_DEPTHS = (512, 256, 256, 128)
# torchvision's SSDLite batch norm for the extra layers and heads: epsilon 0.001 as TF's, momentum
# 0.03 (a decay of 0.97; TF's ssdlite_mobilenet_v2_coco config decays by 0.9997).
HEAD_BATCH_NORM_MOMENTUM = 0.03
HEAD_BATCH_NORM_EPS = 0.001
HEAD_NORM_LAYER = batch_norm(momentum=HEAD_BATCH_NORM_MOMENTUM, eps=HEAD_BATCH_NORM_EPS)


class SSDLiteExtractor(nn.Module):
    """Six feature maps: the backbone's two taps (its ``out_features``, stride 16 and 32), then four
    extra layers (1x1 to half depth, 3x3 stride-2 depthwise, 1x1) of 512, 256, 256, 128 channels
    times ``width_mult`` (multiples of 16, at least ``min_depth``)."""

    def __init__(
        self,
        backbone: FeatureBackbone,
        width_mult: float = 1.0,
        min_depth: int = 16,
        norm_layer: NormLayer = HEAD_NORM_LAYER,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        channels = list(backbone.out_channels.values())
        depths = [max(min_depth, make_divisible(d * width_mult, 16)) for d in EXTRA_DEPTHS]
        extras = []
        for depth in depths:
            extras.append(_extra_block(channels[-1], depth, norm_layer))
            channels.append(depth)
        self.extra = nn.ModuleList(extras)
        _normal_init(self.extra)
        self.out_channels = channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = list(self.backbone(x).values())
        for block in self.extra:
            maps.append(block(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class TFSSDAnchorGenerator(DefaultBoxGenerator):
    """torchvision's SSD anchors with TF's ``reduce_boxes_in_lowest_layer``.

    Scales run linearly from ``min_ratio`` to ``max_ratio`` over the layers; each layer has ratios 1,
    2, 1/2, 3, 1/3 plus ratio 1 at the geometric mean of its scale and the next (6 boxes). The lowest
    layer has only 3: scale 0.1 at ratio 1, and ``min_ratio`` at ratios 2 and 1/2.
    """

    def __init__(self, num_layers: int = 6, min_ratio: float = 0.2, max_ratio: float = 0.95, lowest_scale: float = 0.1):
        super().__init__([[2, 3]] * num_layers, min_ratio=min_ratio, max_ratio=max_ratio)
        self.lowest_scale = lowest_scale
        lowest = [
            [lowest_scale, lowest_scale],
            [min_ratio * math.sqrt(2.0), min_ratio / math.sqrt(2.0)],
            [min_ratio / math.sqrt(2.0), min_ratio * math.sqrt(2.0)],
        ]
        self._wh_pairs[0] = torch.tensor(lowest, dtype=torch.float32)

    def num_anchors_per_location(self) -> list[int]:
        return [len(pairs) for pairs in self._wh_pairs]


class SSDLite(SSD):
    """torchvision's ``SSD`` (matching, box coding, hard negative mining, loss) whose detections come
    from :func:`multiclass_nms`, the function the exported graph runs too. ``class_scores`` turns
    the head's logits into per-class scores (background dropped): softmax here."""

    def __init__(self, *args, normalization=None, **kwargs) -> None:
        self.normalization = resolve_normalization(normalization)
        super().__init__(
            *args, image_mean=list(self.normalization.mean), image_std=list(self.normalization.std), **kwargs
        )

    def class_scores(self, logits: Tensor) -> Tensor:
        """``... x (C + 1)`` logits -> ``... x C`` scores of the object classes."""
        return logits.softmax(-1)[..., 1:]

    def postprocess_detections(self, head_outputs, image_anchors, image_shapes) -> list[dict[str, Tensor]]:
        detections = []
        all_scores = self.class_scores(head_outputs["cls_logits"])
        for regression, scores, anchors, shape in zip(
            head_outputs["bbox_regression"], all_scores, image_anchors, image_shapes
        ):
            boxes = clip_boxes_to_image(self.box_coder.decode_single(regression, anchors), shape)
            boxes, scores, labels, (count,) = multiclass_nms(
                boxes[None],
                scores[None],
                self.score_thresh,
                self.nms_thresh,
                self.detections_per_img,
                self.topk_candidates,
            )
            detections.append({"boxes": boxes[0, :count], "scores": scores[0, :count], "labels": labels[0, :count]})
        return detections


class FocalLossSSD(SSDLite):
    """SSDLite with sigmoid focal loss (Lin et al., 2017) instead of softmax + hard negative
    mining: every anchor counts, normalised by the number of matched anchors; scores are per-class
    sigmoids (column 0, the softmax background, is unused). Box regression is unchanged."""

    def __init__(self, *args, focal_alpha: float = 0.25, focal_gamma: float = 2.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        # Prior for rare foreground (RetinaNet): start every class near probability 0.01.
        for block in self.head.classification_head.module_list:
            nn.init.constant_(block[-1].bias, -math.log((1 - 0.01) / 0.01))

    def class_scores(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits[..., 1:])

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        logits = head_outputs["cls_logits"][..., 1:]
        one_hot = torch.zeros_like(logits)
        for image, (target, matched) in enumerate(zip(targets, matched_idxs)):
            foreground = torch.where(matched >= 0)[0]
            one_hot[image, foreground, target["labels"][matched[foreground]] - 1] = 1.0
        num_foreground = max(1, int(one_hot.sum()))
        losses["classification"] = (
            sigmoid_focal_loss(logits, one_hot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_foreground
        )
        return losses


class TFLossSSD(SSDLite):
    """SSDLite trained as TF's ``ssdlite_mobilenet_v2_coco`` config trains it (see
    :mod:`.ssd_tf_loss`): argmax matching with a forced match per box, sigmoid loss over all
    ``C + 1`` columns, TF's hard example miner. Scores are per-class sigmoids, background dropped."""

    def __init__(self, *args, tf_loss: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tf_loss = TFSSDLoss(**(tf_loss or {}))
        self.proposal_matcher = TFArgMaxMatcher(0.5, 0.5, force_match_for_each_row=True)

    def class_scores(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits[..., 1:])

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, Tensor]:
        return self.tf_loss(targets, head_outputs, anchors, matched_idxs, self.box_coder)


@register_model("ssdlite_mobilenet_v2", task="detection")
def ssdlite_mobilenet_v2(
    num_classes: int = 80,
    width_mult: float = 1.0,
    image_size: int = 320,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    classification_loss: str = "hard_negative_mining",
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
    expansion_groups: int | list[int] | None = None,
    normalization: str | dict | list | None = "imagenet",
    anchor_min_scale: float = 0.2,
    anchor_max_scale: float = 0.95,
    anchor_lowest_scale: float = 0.1,
    round_nearest: int = 8,
    tf_padding: bool = False,
    bottleneck_activation: str = "linear",
    shortcut: str = "bottleneck",
    anchor_generator: str = "clipped",
    batch_norm_momentum: float | None = None,
    batch_norm_eps: float | None = None,
    **kwargs,
) -> SSDLite:
    """SSDLite + MobileNetV2 (paper Table 6: 4.3M parameters, 0.8B MACs at 320x320, 80 classes).

    Args:
        num_classes: object classes, background not counted (the model predicts ``num_classes + 1``).
        width_mult: backbone width multiplier; the extra layers scale with it.
        image_size: the square input every image is resized to.
        weights: a checkpoint of this project's detector (all keys must fit).
        backbone_weights: a torchvision ``mobilenet_v2`` state dict or a checkpoint of any task of this
            project; only its backbone is taken.
        classification_loss: ``"hard_negative_mining"`` (torchvision's: softmax cross-entropy, the 3
            hardest negatives per positive; TF's config mines the same ratio but with a sigmoid loss)
            , ``"focal"`` (sigmoid focal loss, every anchor) or ``"tf"`` (TF's config: sigmoid
            loss with background column, TF's hard example miner; :class:`TFLossSSD`).
        freeze_backbone / frozen_bn: see :meth:`MobileNetV2Backbone.freeze` (fine-tuning).
        expansion_groups: memory-efficient inference (paper section 5.1): k channel groups per
            expansion, one k or one per block; ``None`` the standard path. Eval mode only.
        normalization: the input statistics the weights expect (``"imagenet"``, ``"tf"`` or
            ``{mean, std}``); the model takes RGB in [0, 1] and normalises itself.
        anchor_min_scale / anchor_max_scale / anchor_lowest_scale: anchor scales (fractions of the
            image side) of the first and last layer, and of the lowest layer's extra square box.
        round_nearest / tf_padding: the backbone's channel rounding and TF "SAME" padding, as
            :func:`mobilenet_v2` (for backbones from TF-trained weights, e.g. Google's converted models).
        bottleneck_activation / shortcut: the paper's ablations (section 6.4, Figure 6): ``"linear"``
            or ``"relu6"`` after each projection; the residual connections ``"bottleneck"`` (the
            paper's), ``"expansion"`` or ``"none"`` (see :class:`InvertedResidual`). Same parameters
            as the default network; ``expansion_groups`` refuses ``shortcut="expansion"``.
        anchor_generator: ``"clipped"`` (torchvision's order, box sides clipped to the image) or ``"tf"``
            (TF's ``ssd_anchor_generator``: its order, ratio 0.3333, not clipped).
        batch_norm_momentum / batch_norm_eps: every batch norm's settings (PyTorch momentum = 1 -
            TF decay; TF's config: 0.0003 / 0.001); ``None`` keeps the builders' own.
        kwargs: passed to torchvision's ``SSD`` (``topk_candidates``, ``positive_fraction``, ...).
    """
    return _build_ssdlite(MobileNetV2Backbone, locals())


@register_model("ssdlite_mobilenet_v1", task="detection")
def ssdlite_mobilenet_v1(
    num_classes: int = 80,
    width_mult: float = 1.0,
    image_size: int = 320,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    classification_loss: str = "hard_negative_mining",
    freeze_backbone: bool | int = False,
    frozen_bn: bool = False,
    normalization: str | dict | list | None = "imagenet",
    anchor_min_scale: float = 0.2,
    anchor_max_scale: float = 0.95,
    anchor_lowest_scale: float = 0.1,
    min_depth: int = 16,
    tf_padding: bool = False,
    anchor_generator: str = "clipped",
    batch_norm_momentum: float | None = None,
    batch_norm_eps: float | None = None,
    **kwargs,
) -> SSDLite:
    """SSDLite + MobileNetV1, the paper's comparison row (Table 6: 5.1M parameters, 1.3B MAdds at
    320x320, 80 classes): TF's ``ssdlite_mobilenet_v1_coco``, the same head, extra layers and
    anchors as :func:`ssdlite_mobilenet_v2` on MobileNetV1's ``Conv2d_11_pointwise`` (stride 16)
    and ``Conv2d_13_pointwise`` (stride 32).

    Args: as :func:`ssdlite_mobilenet_v2` (``backbone_weights``: a checkpoint of any task of this
        project with a MobileNetV1 backbone), and
        min_depth: the fewest channels of a backbone or extra layer (16 in TF's SSD feature extractor).
        tf_padding: TensorFlow's "SAME" padding in the backbone's stride-2 convs.
        anchor_generator / batch_norm_momentum / batch_norm_eps: as :func:`ssdlite_mobilenet_v2`.
    """
    return _build_ssdlite(MobileNetV1Backbone, locals())


DETECTORS = {"hard_negative_mining": SSDLite, "focal": FocalLossSSD, "tf": TFLossSSD}
ANCHOR_GENERATORS = ("clipped", "tf")


def _build_ssdlite(backbone_cls: type[FeatureBackbone], arguments: dict) -> SSDLite:
    """The detector on ``backbone_cls``'s two taps. ``arguments["kwargs"]`` (the builder's extra
    keywords) go to torchvision's ``SSD``. ``batch_norm_momentum`` / ``batch_norm_eps``, where
    given, set every batch norm: the backbone's and the head's, each keeping its own default where not."""
    arguments = dict(arguments)
    detector_kwargs = arguments.pop("kwargs")
    for key in ("image_mean", "image_std"):
        if key in detector_kwargs:
            raise ValueError(f"{key} is set by normalization=imagenet|tf|{{mean, std}}, not directly")
    num_classes, classification_loss = arguments["num_classes"], arguments["classification_loss"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if classification_loss not in DETECTORS:
        raise ValueError(f"classification_loss must be one of {sorted(DETECTORS)}, got {classification_loss!r}")
    if arguments["anchor_generator"] not in ANCHOR_GENERATORS:
        raise ValueError(f"anchor_generator must be 'clipped' or 'tf', got {arguments['anchor_generator']!r}")
    backbone_norm = batch_norm(momentum=arguments["batch_norm_momentum"], eps=arguments["batch_norm_eps"])
    return build_model_with_cfg(
        backbone_cls,
        _ssdlite_on_backbone,
        arguments,
        out_features=BACKBONE_TAPS[backbone_cls],
        norm_layer=backbone_norm,
        model_kwargs=detector_kwargs,
    )


def _ssdlite_on_backbone(
    backbone: FeatureBackbone,
    *,
    num_classes: int,
    width_mult: float,
    image_size: int,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    classification_loss: str,
    normalization,
    anchor_min_scale: float,
    anchor_max_scale: float,
    anchor_lowest_scale: float,
    anchor_generator: str,
    batch_norm_momentum: float | None,
    batch_norm_eps: float | None,
    min_depth: int = 16,
    **detector_kwargs,
) -> SSDLite:
    """The detector around ``backbone``: the extra layers, TF's anchors, torchvision's separable head
    and the ``SSD`` of ``classification_loss``."""
    momentum = HEAD_BATCH_NORM_MOMENTUM if batch_norm_momentum is None else batch_norm_momentum
    norm_layer = batch_norm(momentum=momentum, eps=HEAD_BATCH_NORM_EPS if batch_norm_eps is None else batch_norm_eps)
    extractor = SSDLiteExtractor(backbone, width_mult, min_depth, norm_layer)
    anchors = (
        TFSSDAnchorGenerator(min_ratio=anchor_min_scale, max_ratio=anchor_max_scale, lowest_scale=anchor_lowest_scale)
        if anchor_generator == "clipped"
        else TFMultipleGridAnchorGenerator(
            min_scale=anchor_min_scale, max_scale=anchor_max_scale, lowest_scale=anchor_lowest_scale
        )
    )
    head = SSDLiteHead(extractor.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
    return DETECTORS[classification_loss](
        extractor,
        anchors,
        (image_size, image_size),
        num_classes + 1,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        normalization=normalization,
        **detector_kwargs,
    )
