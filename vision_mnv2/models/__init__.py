"""Models: the MobileNetV2 backbone and the networks built on it (and MobileNetV1, for the paper's
comparison rows)."""

from ..layers import make_divisible
from .backbone import FeatureBackbone, FeatureInfo
from .builder import build_model_with_cfg
from .classification import mobilenet_v1, mobilenet_v2
from .compose import compose_model
from .deeplabv3 import DeepLabV3, deeplabv3_mobilenet_v1, deeplabv3_mobilenet_v2, multi_scale_probabilities
from .memory_efficient import (
    largest_activations,
    memory_efficient_inference,
    set_expansion_groups,
    split_expansion_forward,
)
from .mobilenetv1 import DepthwiseSeparable, MobileNetV1, MobileNetV1Backbone
from .mobilenetv2 import InvertedResidual, MobileNetV2, MobileNetV2Backbone
from .ssdlite import SSDLiteExtractor, TFSSDAnchorGenerator, ssdlite_mobilenet_v1, ssdlite_mobilenet_v2
from .weights import (
    TransferReport,
    WeightsError,
    load_backbone_weights,
    load_state_dict_file,
    load_weights,
    resolve_weights,
    transfer_weights,
)

__all__ = [
    "DeepLabV3",
    "DepthwiseSeparable",
    "deeplabv3_mobilenet_v1",
    "deeplabv3_mobilenet_v2",
    "FeatureBackbone",
    "FeatureInfo",
    "InvertedResidual",
    "MobileNetV1",
    "MobileNetV1Backbone",
    "MobileNetV2",
    "MobileNetV2Backbone",
    "SSDLiteExtractor",
    "TFSSDAnchorGenerator",
    "TransferReport",
    "build_model_with_cfg",
    "compose_model",
    "WeightsError",
    "resolve_weights",
    "transfer_weights",
    "load_backbone_weights",
    "load_state_dict_file",
    "load_weights",
    "make_divisible",
    "largest_activations",
    "memory_efficient_inference",
    "set_expansion_groups",
    "split_expansion_forward",
    "mobilenet_v1",
    "mobilenet_v2",
    "multi_scale_probabilities",
    "ssdlite_mobilenet_v1",
    "ssdlite_mobilenet_v2",
]
