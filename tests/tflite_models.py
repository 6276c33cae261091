"""TFLite files with the structure of Google's MobileNetV2 releases, built from scratch.

Google's files (``mobilenet_v2_1.0_224_quant.tflite``, ``deeplabv3_mnv2_pascal_quant.tflite``) are
not in a user's clone nor on CI; these functions write files that the converter cannot tell from
them: the same operators in the same order with the same options, tensor names (TF's converter
names each tensor after every TF op fused into it; the rule is reproduced, see ``_fused_names``),
tensor table order, shapes, types and quantisation layout (uint8, one scale and zero point per
tensor, weights included; int32 biases with scale = input scale x weight scale; ReLU6 outputs on
[0, 6]; a QUANTIZE in front of DeepLab's concatenation). ``tests/test_tflite_generated.py`` checks
that against the real files wherever they are present.

The weights are random (from ``seed``), with batch norm "folded" the way TF folds a trained one:
each layer is drawn, measured on a few probe images (:func:`probe_images`) and rescaled per
channel so that its output has a chosen mean and spread, as a batch norm would leave it.
Activations thus neither vanish nor explode through the 50 layers; ReLU6 units sit mostly inside
[0, 6], so that uint8 rounding stays small against them and the quantised file computes what the
float one does, about as closely as Google's trained file does (logits within a few percent).
Like a trained network, each is sure of something: the classifier gives each probe image a class
of its own by a wide margin (on other images mostly one class wins), DeepLab labels images in
regions of the background and 4 other classes. The activation ranges of the quantised files are
measured on the probe images too.

Float files are the quantised graph in float32, as ``tests/tflite_writer.float_copy`` makes them
from Google's: same names, float32 constants and activations, no re-quantisation; their input is
the float image TF's graphs take, ``(pixel - 128) / 128``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .tflite_writer import Graph, Operator, Tensor, write_tflite
from .tflite_writer import _make_divisible as make_divisible

__all__ = [
    "IMAGENET_CLASSES_WITH_BACKGROUND",
    "VOC_LABELS",
    "deeplab_v3_mobilenet_v2",
    "deeplab_v3_mobilenet_v2_graph",
    "edgetpu_compiled",
    "keras_mobilenet_v2_classifier",
    "keras_mobilenet_v2_classifier_graph",
    "mobilenet_v1_start",
    "probe_images",
    "sample_images",
    "tf_slim_mobilenet_v1_classifier",
    "tf_slim_mobilenet_v1_classifier_graph",
    "tf_slim_mobilenet_v2_classifier",
    "tf_slim_mobilenet_v2_classifier_graph",
    "write_imagenet_labels",
    "write_voc_labels",
]

IMAGENET_CLASSES_WITH_BACKGROUND = 1001
VOC_LABELS = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# MobileNetV2's bottlenecks (Table 2 of the paper; TF-slim's V2_DEF): expansion t, channels c,
# repeats n, stride s of the first repeat.
_BOTTLENECKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280
_DEEPLAB_CHANNELS = 256  # aspp0, image pooling, concat_projection: not scaled by the width
# Google's quantised graphs read uint8 pixels with scale 1/128 and zero point 128: (pixel - 128) / 128.
_INPUT_QUANTIZATION = (1.0 / 128.0, 128)
# Keras' MobileNetV2 takes pixel / 127.5 - 1; its uint8 files: scale 1/127.5, zero point 127.
_KERAS_INPUT_QUANTIZATION = (1.0 / 127.5, 127)
# TF-slim's MobileNetV1 after the stem (32 channels, stride 2): (stride, channels) of the 13
# depthwise-separable layers (mobilenet_v1.py's _CONV_DEFS).
_V1_LAYERS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), *[(1, 512)] * 5, (2, 1024), (1, 1024))
# Activation statistics barely depend on the image size (every layer is a convolution), so the
# probe images that set the weights and the quantisation ranges stay small whatever the file's size.
_PROBE_SIZE = 96
_PROBE_IMAGES = 6
# Activation ranges measured on the probe images are widened by this much, so that other images
# are rarely clipped.
_RANGE_MARGIN = 1.25


# --------------------------------------------------------------------------------------------------
# Images


def sample_images(count: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """``count`` RGB images, uint8 N x H x W x 3: smooth colour fields of a few blobs each, with
    texture, different from image to image (so that a network's outputs differ too). ``size``:
    an int or (height, width)."""
    height, width = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        grid = int(rng.integers(2, 7))
        coarse = torch.from_numpy(rng.normal(size=(1, 3, grid, grid)).astype(np.float32))
        field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
        fine = torch.from_numpy(rng.normal(size=(1, 3, max(2, height // 4), max(2, width // 4))).astype(np.float32))
        texture = F.interpolate(fine, size=(height, width), mode="bilinear", align_corners=False)[0]
        image = 128 + 60 * field * rng.uniform(0.5, 1.5) + 20 * texture + torch.from_numpy(rng.normal(0, 30, size=(3, 1, 1)).astype(np.float32))  # fmt: skip
        images.append(image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    return np.stack(images)


def probe_images(size: int, seed: int = 0) -> np.ndarray:
    """The images that a generator with this ``seed`` measured its layers on (uint8 N x H x W x 3),
    at the file's ``size`` up to 96 px (larger files are measured at 96 px: the statistics of
    convolutions barely depend on the size). The classifier is sure of a class of its own on each."""
    return sample_images(_PROBE_IMAGES, min(size, _PROBE_SIZE), seed=12345 + seed)


# --------------------------------------------------------------------------------------------------
# Labels


def write_imagenet_labels(path: str | Path, num_classes: int = IMAGENET_CLASSES_WITH_BACKGROUND) -> Path:
    """A label file like Google's ``imagenet_labels.txt``: ``num_classes`` lines, the first
    ``background`` (TF-slim's class 0), then ``class 1`` ... (one per logit of a classifier made with
    the same ``num_classes``)."""
    names = ["background"] + [f"class {i}" for i in range(1, num_classes)]
    path = Path(path)
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


def write_voc_labels(path: str | Path) -> Path:
    """A label file like Google's ``pascal_voc_segmentation_labels.txt``: the 21 Pascal VOC names,
    then, as Google's file has, an empty line and a note (the converter reads up to the empty line)."""
    path = Path(path)
    note = "255 is the ignore label: pixels that the VOC ground truth leaves out of training and evaluation."
    path.write_text("\n".join(VOC_LABELS) + "\n\n" + note + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# The float network, built layer by layer on probe images


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's "SAME" padding of one side: the output is ceil(input / stride), the padding split with
    the extra pixel after (at stride 2 on even sizes (0, 1), where PyTorch's is (1, 1))."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _tf_same_conv(x: torch.Tensor, weight: torch.Tensor, bias, stride: int, dilation: int, groups: int) -> torch.Tensor:
    kernel = weight.shape[-1]
    pads = [_same_pads(size, kernel, stride, dilation) for size in x.shape[2:]]
    x = F.pad(x, (*pads[1], *pads[0]))
    return F.conv2d(x, weight, bias, stride, 0, dilation, groups)


_ACTIVATION_FUNCTIONS = {"RELU6": lambda z: z.clamp(0, 6), "RELU": F.relu, "NONE": lambda z: z}
_ACTIVATION_NAMES = {"RELU6": "Relu6", "RELU": "Relu", "NONE": None}


@dataclass
class _FoldedConv:
    """A convolution with batch norm folded in, for naming its tensors as TF's converter does."""

    scope: str  # e.g. MobilenetV2/expanded_conv_3/expand
    kernel_op: str  # Conv2D_Fold or depthwise_Fold: the TF op holding the folded weights
    channels: int
    activation: str  # RELU6, RELU or NONE
    weight: int
    bias: int
    output: int


class _Builder:
    """Tensors and operators in the order TF's converter emits them, with each activation's value
    on the probe images (N x C x H x W, float32) kept for setting the next layer's weights and the
    quantisation ranges."""

    def __init__(self, seed: int, input_name: str, size: int, probe: torch.Tensor) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Tensor] = []
        self.operators: list[Operator] = []
        self.values: dict[int, torch.Tensor] = {}
        self.folded: list[_FoldedConv] = []
        self.lead: list[int] = []  # constants TF's converter lists before everything else
        self.logits_bias: int | None = None
        self.input = self.tensor(input_name, (1, size, size, 3), np.float32)
        self.values[self.input] = probe
        self.image = self.input  # what the stem reads: the input, or the graph's rescaling of it

    def rescale(self, pixels: torch.Tensor, scale: float, offset: float) -> int:
        """A Keras ``Rescaling(scale, offset)`` layer in the graph: the input takes ``pixels``
        (0..255) and MUL + ADD give the stem ``pixels * scale + offset``."""
        shape = self.graph_shape(self.input)
        self.values[self.input] = pixels
        factor = self.constant("rescaling/Cast/x", np.array(scale, dtype=np.float32))
        shift = self.constant("rescaling/Cast_1/x", np.array(offset, dtype=np.float32))
        scaled = self.activation("rescaling/mul", pixels * scale, shape)
        self.operators.append(Operator("MUL", [self.input, factor], [scaled], {"activation": "NONE"}))
        self.image = self.activation("rescaling/add", pixels * scale + offset, shape)
        self.operators.append(Operator("ADD", [scaled, shift], [self.image], {"activation": "NONE"}))
        return self.image

    def tensor(self, name: str, shape: tuple[int, ...], dtype, data: np.ndarray | None = None) -> int:
        self.tensors.append(Tensor(name, tuple(int(s) for s in shape), np.dtype(dtype), data))
        return len(self.tensors) - 1

    def activation(self, name: str, value: torch.Tensor, shape: tuple[int, ...]) -> int:
        """An activation: ``shape`` in the graph (batch 1, the file's size), ``value`` at probe size."""
        index = self.tensor(name, shape, np.float32)
        self.values[index] = value
        return index

    def graph_shape(self, tensor: int) -> tuple[int, ...]:
        return self.tensors[tensor].shape

    def conv(
        self,
        x: int,
        scope: str,
        channels: int,
        *,
        kernel: int = 1,
        stride: int = 1,
        dilation: int = 1,
        depthwise: bool = False,
        activation: str = "RELU6",
        explicit_pad: bool = False,
    ) -> int:
        """A folded conv + batch norm + activation: random weights, rescaled per output channel so
        that on the probe images its pre-activation has the mean and spread a trained batch norm
        would give (mostly inside ReLU6's linear range). ``explicit_pad`` (strided convs): as Keras
        builds them, a PAD of TF's SAME pads (ZeroPadding2D) and a VALID convolution."""
        value = self.values[x]
        c_in = value.shape[1]
        groups = c_in if depthwise else 1
        out_channels = c_in if depthwise else channels
        fan_in = kernel * kernel * (1 if depthwise else c_in)
        weight = torch.from_numpy(self.rng.normal(0, math.sqrt(2.0 / fan_in), size=(out_channels, c_in // groups, kernel, kernel)).astype(np.float32))  # fmt: skip
        z = _tf_same_conv(value, weight, None, stride, dilation, groups)
        mean, spread = _statistics(z)
        if activation == "NONE":  # projections: the residual stream around unit scale
            gamma, beta = self.rng.uniform(0.5, 1.0, out_channels), self.rng.normal(0, 0.25, out_channels)
        else:
            # Most units active and well inside [0, 6]: the uint8 steps of 6/255 are then small
            # against the activations, and the quantised file stays close to the float network, as a
            # trained one does (with activations near 0 the rounding compounds over the 50 layers).
            gamma, beta = self.rng.uniform(0.6, 1.2, out_channels), self.rng.uniform(1.2, 2.2, out_channels)
        scale = torch.from_numpy(gamma.astype(np.float32)) / spread
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = torch.from_numpy(beta.astype(np.float32)) - mean * scale
        # conv(x, w * scale) + bias, without convolving again
        out = _ACTIVATION_FUNCTIONS[activation](z * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))
        # TFLite layouts: CONV_2D O x H x W x I, DEPTHWISE_CONV_2D 1 x H x W x C.
        stored = weight.permute(1, 2, 3, 0) if depthwise else weight.permute(0, 2, 3, 1)
        w = self.tensor("", stored.shape, np.float32, np.ascontiguousarray(stored.numpy()))
        b = self.tensor("", (out_channels,), np.float32, bias.numpy().copy())
        _, height, width, _ = self.graph_shape(x)
        y = self.activation("", out, (1, -(-height // stride), -(-width // stride), out_channels))
        options = {"padding": "SAME", "stride": (stride, stride), "dilation": (dilation, dilation), "activation": activation}  # fmt: skip
        if explicit_pad and stride > 1:
            pads = [_same_pads(length, kernel, stride, dilation) for length in (height, width)]
            paddings = self.constant(f"{scope}_pad/Pad/paddings", np.array([(0, 0), *pads, (0, 0)], dtype=np.int32))
            padded_shape = (1, height + sum(pads[0]), width + sum(pads[1]), c_in)
            probe_pads = [_same_pads(length, kernel, stride, dilation) for length in value.shape[2:]]
            padded = self.activation(f"{scope}_pad/Pad", F.pad(value, (*probe_pads[1], *probe_pads[0])), padded_shape)
            self.operators.append(Operator("PAD", [x, paddings], [padded]))
            x, options = padded, {**options, "padding": "VALID"}
        self.operators.append(Operator("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, w, b], [y], options))
        kernel_op = "depthwise_Fold" if depthwise else "Conv2D_Fold"
        self.folded.append(_FoldedConv(scope, kernel_op, out_channels, activation, w, b, y))
        return y

    def logits(
        self, x: int, scope: str, num_classes: int, spread: float, confident_margin: float = 0.0, present: int = 0
    ) -> int:
        """The last 1x1 conv (not folded: TF's logits have biases, no batch norm), random weights
        scaled together to logits of ``spread``. On a feature map (DeepLab) each class is centred
        over the probe pixels, so that the winner changes from pixel to pixel. On pooled features
        (the classifier) it is not: what the classes differ by is mostly the same on every image
        (what the images differ by is small there, and amplifying it would amplify the uint8
        rounding with it), so that one class wins on most images.

        ``confident_margin`` (classifiers): as a trained classifier is on photos of classes it
        knows, the network is made sure of one class per probe image: a class of its own whose
        logit is ``confident_margin`` on that image and 0 on the other probe images (least squares
        on the pooled features), far above the ``spread`` of the rest.

        ``present`` (segmentation): as a photo shows a few classes, only the background and
        ``present - 1`` other classes win anywhere; the rest get a constant logit well below them.
        Few classes keep the label map in regions (Google's model on the bird: background and bird),
        whose borders are the only pixels where rounding can change the label."""
        value = self.values[x]
        c_in = value.shape[1]
        weight = torch.from_numpy(self.rng.normal(0, math.sqrt(1.0 / c_in), size=(num_classes, c_in, 1, 1)).astype(np.float32))  # fmt: skip
        z = F.conv2d(value, weight)
        mean, _ = _statistics(z)
        scale = spread / float((z - mean.view(1, -1, 1, 1)).std())
        weight = weight * scale
        bias = -mean * scale + torch.from_numpy(self.rng.normal(0, 0.1 * spread, num_classes).astype(np.float32))
        if present:
            others = self.rng.choice(np.arange(1, num_classes), min(present, num_classes) - 1, replace=False)
            absent = np.setdiff1d(np.arange(num_classes), [0, *others])
            weight[absent] = 0.0
            bias[absent] = -2.0 * spread
        if confident_margin:
            features = value.flatten(1).double()  # N x C: one pooled vector per probe image
            count = min(len(features), num_classes - 1)
            confident = [int(c) for c in self.rng.choice(np.arange(1, num_classes), count, replace=False)]
            targets = confident_margin * torch.eye(len(features), count, dtype=torch.float64)
            centre = features.mean(dim=0)
            solved = torch.linalg.pinv(features - centre) @ (targets - targets.mean(dim=0))  # C x count
            weight[confident] = solved.T.float().view(count, c_in, 1, 1)
            bias[confident] = (targets.mean(dim=0) - centre @ solved).float()
        out = F.conv2d(value, weight, bias)
        stored = weight.permute(0, 2, 3, 1)
        w = self.tensor(f"{scope}/Conv2D;{scope}/weights_quant/FakeQuantWithMinMaxVars", stored.shape, np.float32, np.ascontiguousarray(stored.numpy()))  # fmt: skip
        b = self.tensor(f"{scope}/BiasAdd;{scope}/Conv2D;{scope}/biases", (num_classes,), np.float32, bias.numpy().copy())  # fmt: skip
        y = self.activation(
            f"{scope}/BiasAdd;{scope}/Conv2D;{scope}/biases1", out, (*self.graph_shape(x)[:3], num_classes)
        )
        options = {"padding": "SAME", "stride": (1, 1), "dilation": (1, 1), "activation": "NONE"}
        self.operators.append(Operator("CONV_2D", [x, w, b], [y], options))
        self.logits_bias = b
        return y

    def as_fully_connected(self, y: int, scope: str) -> int:
        """The 1x1-conv logits just added (``y`` their output), rewritten as the fully connected
        layer the iNaturalist releases have: the same weights as output x input, the output
        1 x classes (TFLite's FULLY_CONNECTED flattens its 1 x 1 x 1 x C input itself)."""
        conv = self.operators.pop()
        assert conv.op == "CONV_2D" and conv.outputs == [y]
        x, w, b = conv.inputs
        weight = self.tensors[w]
        data = np.ascontiguousarray(weight.data.reshape(weight.shape[0], -1))
        self.tensors[w] = replace(weight, name=f"{scope}/MatMul;{scope}/weights_quant/FakeQuantWithMinMaxVars", shape=data.shape, data=data)  # fmt: skip
        self.tensors[b] = replace(self.tensors[b], name=f"{scope}/biases")
        self.tensors[y] = replace(self.tensors[y], name=f"{scope}/MatMul;{scope}/BiasAdd", shape=(1, data.shape[0]))
        self.values[y] = self.values[y].flatten(1)
        self.operators.append(Operator("FULLY_CONNECTED", [x, w, b], [y], {"activation": "NONE"}))
        return y

    def add(self, a: int, b: int, name: str) -> int:
        y = self.activation(name, self.values[a] + self.values[b], self.graph_shape(a))
        self.operators.append(Operator("ADD", [a, b], [y], {"activation": "NONE"}))
        return y

    def global_average_pool(self, x: int, name: str) -> int:
        value = self.values[x]
        y = self.activation(name, value.mean(dim=(2, 3), keepdim=True), (1, 1, 1, self.graph_shape(x)[3]))
        options = {"padding": "VALID", "stride": (1, 1), "filter": self.graph_shape(x)[1:3], "activation": "NONE"}
        self.operators.append(Operator("AVERAGE_POOL_2D", [x], [y], options))
        return y

    def mean(self, x: int, name: str, keep_dims: bool) -> int:
        """TF2 / Keras' global pool: MEAN over axes 1 and 2 (``keep_dims`` False: 1 x C, Keras'
        GlobalAveragePooling2D; the value kept for the next layer is 4-d either way)."""
        channels = self.graph_shape(x)[3]
        axes = self.constant(f"{name}/reduction_indices", np.array([1, 2], dtype=np.int32))
        y = self.activation(name, self.values[x].mean(dim=(2, 3), keepdim=True), (1, 1, 1, channels) if keep_dims else (1, channels))  # fmt: skip
        self.operators.append(Operator("MEAN", [x, axes], [y], {"keep_dims": keep_dims}))
        return y

    def constant(self, name: str, data: np.ndarray) -> int:
        return self.tensor(name, data.shape, data.dtype, data)

    def resize_bilinear(self, x: int, size: int, name: str, probe_size: tuple[int, int]) -> int:
        """TF1's ``tf.image.resize_bilinear(align_corners=True)``, DeepLab's upsampling. ``size``:
        the constant tensor with the graph's output size; ``probe_size``: the size at probe scale."""
        value = F.interpolate(self.values[x], size=probe_size, mode="bilinear", align_corners=True)
        height, width = (int(v) for v in self.tensors[size].data)
        y = self.activation(name, value, (1, height, width, self.graph_shape(x)[3]))
        self.operators.append(Operator("RESIZE_BILINEAR", [x, size], [y], {"align_corners": True, "half_pixel_centers": False}))  # fmt: skip
        return y

    def backbone(self, width: float, round_to: int, output_stride: int, explicit_pad: bool = False) -> int:
        """Stem and the 17 bottlenecks with TF-slim's scopes; DeepLab's output stride as TF's
        ``mobilenet_base(output_stride=...)`` builds it: once the stride is reached, a stride-2
        depthwise conv keeps stride 1 and every later one dilates by the stride it skipped.
        ``explicit_pad``: strided convs padded by PAD operators, as Keras builds them."""
        x = self.conv(self.image, "MobilenetV2/Conv", make_divisible(_STEM_CHANNELS * width, round_to), kernel=3, stride=2, explicit_pad=explicit_pad)  # fmt: skip
        current_stride, dilation, number = 2, 1, 0
        for expansion, channels, repeats, first_stride in _BOTTLENECKS:
            out_channels = make_divisible(channels * width, round_to)
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                block_dilation = dilation
                if stride == 2 and current_stride >= output_stride:
                    stride, dilation = 1, dilation * 2
                else:
                    current_stride *= stride
                scope = "MobilenetV2/expanded_conv" + (f"_{number}" if number else "")
                block_input, h = x, x
                c_in = self.graph_shape(x)[3]
                if expansion != 1:  # TF-slim's expand_input_by_factor: multiples of 8 whatever the width rounding
                    h = self.conv(h, f"{scope}/expand", make_divisible(c_in * expansion, 8))
                h = self.conv(h, f"{scope}/depthwise", 0, kernel=3, stride=stride, dilation=block_dilation, depthwise=True, explicit_pad=explicit_pad)  # fmt: skip
                h = self.conv(h, f"{scope}/project", out_channels, activation="NONE")
                if stride == 1 and c_in == out_channels:
                    h = self.add(h, block_input, f"{scope}/add")
                x = h
                number += 1
        return x

    def finish(
        self,
        outputs: list[int],
        quantized: bool,
        requantize_before_concat: bool = False,
        input_quantization: tuple[float, int] = _INPUT_QUANTIZATION,
    ) -> Graph:
        """Name the folded convs' tensors, quantise if asked, order the tensor table as TF's
        converter does."""
        _name_folded(self.tensors, self.folded)
        graph = Graph(self.tensors, self.operators, [self.input], outputs)
        if quantized:
            graph = _quantize(graph, self.values, requantize_before_concat, input_quantization)
        # Google's files list the constants the operators' options refer to first, then the logits'
        # bias, the projections' biases from the last block down, the other folded biases by name
        # from Z to A, and only then the rest in the order the operators use them.
        projections = [c.bias for c in self.folded if c.activation == "NONE"]
        others = sorted((c.bias for c in self.folded if c.activation != "NONE"), key=lambda i: graph.tensors[i].name, reverse=True)  # fmt: skip
        lead = [self.input, *self.lead, self.logits_bias, *reversed(projections), *others]
        return _reorder(graph, lead)


def _statistics(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and spread, as a batch norm measures them. Where the map is 1 x 1 (DeepLab's
    image pooling, after a global pool) a few probe images say little about one channel: the
    mean and spread are those of all channels together, so that the layer passes on what the
    channels differ by (the image's context) rather than amplifying what the probe images differ by."""
    if z.shape[2] * z.shape[3] == 1:
        return z.mean().expand(z.shape[1]), z.std().clamp_min(1e-3).expand(z.shape[1])
    mean = z.mean(dim=(0, 2, 3))
    # A channel that barely varies is not blown up to full spread (its rounding would be too).
    return mean, (z - mean.view(1, -1, 1, 1)).std(dim=(0, 2, 3)).clamp_min(1e-3)


def _fused_names(conv: _FoldedConv, shared: str) -> tuple[str, str, str]:
    """Weight, bias and output names of a folded conv as TF's converter writes them: each tensor is
    named after all TF ops fused into it, joined by ';', first occurrences kept. ``shared`` is the
    op of a constant that the converter shares among all layers of the same width (its name is the
    last such layer's), so it shows up in the names of other layers."""

    def join(*parts: str) -> str:
        return ";".join(dict.fromkeys(parts))

    s, k = conv.scope, conv.kernel_op
    weight = f"{s}/{k};{s}/weights_quant/FakeQuantWithMinMaxVars"
    if conv.activation == "NONE":
        bias = join(f"{s}/add_fold", shared, f"{s}/{k}", f"{s}/BatchNorm_Fold/bias")
        return weight, bias, bias + "1"
    output = join(f"{s}/{_ACTIVATION_NAMES[conv.activation]}", f"{s}/add_fold", shared, f"{s}/{k}", f"{s}/BatchNorm_Fold/bias")  # fmt: skip
    return weight, f"{s}/BatchNorm_Fold/bias", output


def _name_folded(tensors: list[Tensor], folded: list[_FoldedConv]) -> None:
    last_of_width = {conv.channels: f"{conv.scope}/{conv.kernel_op}" for conv in folded}  # later layers overwrite
    for conv in folded:
        names = _fused_names(conv, last_of_width[conv.channels])
        for index, name in zip((conv.weight, conv.bias, conv.output), names):
            tensors[index] = replace(tensors[index], name=name)


def _reorder(graph: Graph, lead: list[int]) -> Graph:
    """TF's converter's tensor table: the input and the constants in ``lead`` first, then every
    other tensor where the operators first read or write it (a layer's weights, then its output)."""
    order = list(dict.fromkeys(lead))
    placed = set(order)
    for op in graph.operators:
        for index in [*op.inputs, *op.outputs]:
            if index >= 0 and index not in placed:
                order.append(index)
                placed.add(index)
    new = {old: i for i, old in enumerate(order)}
    operators = [replace(op, inputs=[new[i] for i in op.inputs], outputs=[new[i] for i in op.outputs]) for op in graph.operators]  # fmt: skip
    return Graph([graph.tensors[i] for i in order], operators, [new[i] for i in graph.inputs], [new[i] for i in graph.outputs])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Quantisation as Google's files have it


def _activation_range(value: torch.Tensor) -> tuple[float, float]:
    """uint8 scale and zero point covering ``value`` (widened by the margin), zero exactly representable."""
    low = min(float(value.min()), 0.0) * _RANGE_MARGIN
    high = max(float(value.max()), 0.0) * _RANGE_MARGIN
    scale = max(high - low, 1e-6) / 255.0
    return scale, int(np.clip(round(-low / scale), 0, 255))


def _quantize_weights(data: np.ndarray) -> tuple[np.ndarray, float, int]:
    """uint8 with one scale and zero point for the whole tensor (Google's files: no per-channel)."""
    low, high = min(float(data.min()), 0.0), max(float(data.max()), 0.0)
    scale = max(high - low, 1e-8) / 255.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    q = np.clip(np.round(data / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point


def _quantize(
    graph: Graph,
    values: dict[int, torch.Tensor],
    requantize_before_concat: bool,
    input_quantization: tuple[float, int] = _INPUT_QUANTIZATION,
) -> Graph:
    """The float graph as Google's uint8 files are: activations uint8 (ReLU6 outputs on [0, 6],
    others on their measured range), weights uint8 per tensor, biases int32 at input scale x weight
    scale; pools, reshapes and resizes keep their input's parameters; softmax outputs 1/256.
    ``requantize_before_concat``: DeepLab's concatenation has one scale for its inputs and output;
    the image-pooling branch (a resize, which keeps its input's scale) gets a QUANTIZE to it, the
    aspp0 conv writes at it directly."""
    params: dict[int, tuple[float, int]] = {graph.inputs[0]: input_quantization}
    producer = {out: op for op in graph.operators for out in op.outputs}
    for op in graph.operators:
        out = op.outputs[0]
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            params[out] = (6.0 / 255.0, 0) if op.options["activation"] == "RELU6" else _activation_range(values[out])
        elif op.op in ("ADD", "CONCATENATION", "FULLY_CONNECTED"):
            params[out] = _activation_range(values[out])
        elif op.op in ("AVERAGE_POOL_2D", "MEAN", "PAD", "RESHAPE", "RESIZE_BILINEAR"):
            params[out] = params[op.inputs[0]]
        elif op.op == "SOFTMAX":
            params[out] = (1.0 / 256.0, 0)
    requantized: dict[int, int] = {}  # resize output -> its re-quantised copy
    tensors = list(graph.tensors)
    for op in graph.operators:
        if op.op != "CONCATENATION" or not requantize_before_concat:
            continue
        for index in op.inputs:
            if producer[index].op == "RESIZE_BILINEAR":
                requantized[index] = len(tensors)
                tensors.append(replace(tensors[index], name=tensors[index].name + "1"))
                params[requantized[index]] = params[op.outputs[0]]
            else:
                params[index] = params[op.outputs[0]]

    quantized = list(tensors)
    for index, t in enumerate(tensors):
        if index in params:
            scale, zero_point = params[index]
            quantized[index] = replace(t, dtype=np.dtype(np.uint8), scale=np.array([scale], np.float32), zero_point=np.array([zero_point]))  # fmt: skip
    operators = []
    for op in graph.operators:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weight, bias = tensors[op.inputs[1]], tensors[op.inputs[2]]
            q, w_scale, w_zero = _quantize_weights(weight.data)
            quantized[op.inputs[1]] = replace(weight, dtype=np.dtype(np.uint8), data=q, scale=np.array([w_scale], np.float32), zero_point=np.array([w_zero]))  # fmt: skip
            # TFLite checks bias scale == input scale x weight scale, in float32 as it computes it.
            b_scale = np.float32(params[op.inputs[0]][0]) * np.float32(w_scale)
            b = np.round(bias.data.astype(np.float64) / float(b_scale)).astype(np.int32)
            quantized[op.inputs[2]] = replace(bias, dtype=np.dtype(np.int32), data=b, scale=np.array([b_scale], np.float32), zero_point=np.array([0]))  # fmt: skip
        inputs = list(op.inputs)
        if op.op == "CONCATENATION":
            for position, index in enumerate(inputs):
                if index in requantized:
                    operators.append(Operator("QUANTIZE", [index], [requantized[index]]))
                    inputs[position] = requantized[index]
        operators.append(replace(op, inputs=inputs))
    return Graph(quantized, operators, list(graph.inputs), list(graph.outputs))


# --------------------------------------------------------------------------------------------------
# The two networks


def _probe(size: int, seed: int, input_quantization: tuple[float, int] = _INPUT_QUANTIZATION) -> torch.Tensor:
    """The probe images as the float graph takes them, N x 3 x H x W: ``scale * (pixel - zero_point)``."""
    scale, zero_point = input_quantization
    return (torch.from_numpy(probe_images(size, seed)).permute(0, 3, 1, 2).float() - zero_point) * scale


def tf_slim_mobilenet_v2_classifier_graph(
    width: float = 1.0, size: int = 224, num_classes: int = IMAGENET_CLASSES_WITH_BACKGROUND, quantized: bool = True, seed: int = 0,
    logits: str = "conv",
) -> Graph:  # fmt: skip
    """The graph that :func:`tf_slim_mobilenet_v2_classifier` writes (same arguments), to inspect
    or change before :func:`tests.tflite_writer.write_tflite`."""
    if logits not in ("conv", "fully_connected"):
        raise ValueError(f"logits is 'conv' or 'fully_connected', got {logits!r}")
    builder = _Builder(seed, "input", size, _probe(size, seed))
    x = builder.backbone(width, 8, output_stride=32)
    x = builder.conv(x, "MobilenetV2/Conv_1", make_divisible(_LAST_CHANNELS * max(1.0, width)))
    if logits == "fully_connected":  # as mobilenet_v2_1.0_224_inat_bird_quant.tflite
        x = builder.global_average_pool(x, "AvgPool/AvgPool")
        x = builder.logits(x, "Logits", num_classes, spread=2.0, confident_margin=12.0)
        x = builder.as_fully_connected(x, "Logits")
        probabilities = builder.activation("prediction", builder.values[x].softmax(dim=1), (1, num_classes))
        builder.operators.append(Operator("SOFTMAX", [x], [probabilities]))
        return builder.finish([probabilities], quantized)
    x = builder.global_average_pool(x, "MobilenetV2/Logits/AvgPool")
    x = builder.logits(x, "MobilenetV2/Logits/Conv2d_1c_1x1", num_classes, spread=2.0, confident_margin=12.0)
    shape = builder.constant("MobilenetV2/Logits/Squeeze", np.array([1, num_classes], dtype=np.int32))
    builder.lead.append(shape)
    squeezed = builder.activation("MobilenetV2/Logits/Squeeze1", builder.values[x], (1, num_classes))
    builder.operators.append(Operator("RESHAPE", [x, shape], [squeezed]))
    probabilities = builder.activation("MobilenetV2/Predictions/Softmax", builder.values[x].softmax(dim=1), (1, num_classes))  # fmt: skip
    builder.operators.append(Operator("SOFTMAX", [squeezed], [probabilities]))
    return builder.finish([probabilities], quantized)


def tf_slim_mobilenet_v2_classifier(
    path: str | Path,
    width: float = 1.0,
    size: int = 224,
    num_classes: int = IMAGENET_CLASSES_WITH_BACKGROUND,
    quantized: bool = True,
    seed: int = 0,
    logits: str = "conv",
) -> Path:
    """Write a TF-slim MobileNetV2 ImageNet classifier as Google released it
    (``mobilenet_v2_{width}_{size}_quant.tflite``), with random folded weights.

    Args:
        path: the ``.tflite`` file to write.
        width: TF-slim's depth multiplier (Google released 0.35, 0.5, 0.75, 1.0, 1.3, 1.4); channels
            rounded to multiples of 8, the last 1x1 conv 1280 channels, scaled only above 1.
        size: input height and width (Google: 96, 128, 160, 192, 224); any size works.
        num_classes: logits, TF-slim's 1001 with class 0 the background.
        quantized: uint8 as Google's ``*_quant.tflite`` (uint8 pixels in, uint8 probabilities out);
            ``False``: float32 throughout, the input ``(pixel - 128) / 128``.
        seed: the random weights (and the probe images their scaling is measured on).
        logits: ``"conv"``, the ImageNet releases' 1x1 convolution; ``"fully_connected"``, the
            iNaturalist releases' (``mobilenet_v2_1.0_224_inat_bird_quant.tflite``): after the
            pool ``AvgPool/AvgPool``, FULLY_CONNECTED ``Logits/MatMul;Logits/BiasAdd`` (1 x classes)
            and SOFTMAX ``prediction``.

    Operators: CONV_2D stem (3x3, stride 2, SAME, ReLU6), per bottleneck [CONV_2D expansion],
    DEPTHWISE_CONV_2D, CONV_2D projection, [ADD], then CONV_2D ``Conv_1``, AVERAGE_POOL_2D,
    CONV_2D logits, RESHAPE ``Logits/Squeeze1``, SOFTMAX ``Predictions/Softmax`` (the one output).
    Returns ``path``.
    """
    graph = tf_slim_mobilenet_v2_classifier_graph(width, size, num_classes, quantized, seed, logits)
    return write_tflite(graph, path)


def keras_mobilenet_v2_classifier_graph(
    width: float = 1.0,
    size: int = 224,
    num_classes: int = 1000,
    quantized: bool = True,
    seed: int = 0,
    rescaling: bool = False,
) -> Graph:
    """``tf.keras.applications.MobileNetV2`` through TF2's TFLite converter, as far as the converter
    can tell: every strided convolution a PAD of TF's SAME pads (ZeroPadding2D) and a VALID
    convolution, the pool a MEAN over axes 1 and 2 to 1 x C (GlobalAveragePooling2D), the logits a
    FULLY_CONNECTED layer (Dense) with ``num_classes`` outputs (Keras: 1000, no background), then
    SOFTMAX ``predictions``. uint8 files take pixels as Keras' preprocessing gives them,
    ``pixel / 127.5 - 1``: scale 1/127.5, zero point 127. ``rescaling`` (float files): that
    preprocessing inside the graph, as a ``Rescaling(1/127.5, -1)`` layer (MUL, ADD), the input
    pixels 0..255. Tensor names are TF-slim's."""
    if rescaling and quantized:
        raise ValueError("rescaling is for float files (a uint8 input carries its scaling)")
    builder = _Builder(seed, "input_1", size, _probe(size, seed, _KERAS_INPUT_QUANTIZATION))
    if rescaling:
        builder.rescale(_probe(size, seed, (1.0, 0)), 1 / 127.5, -1.0)
    x = builder.backbone(width, 8, output_stride=32, explicit_pad=True)
    x = builder.conv(x, "MobilenetV2/Conv_1", make_divisible(_LAST_CHANNELS * max(1.0, width)))
    x = builder.mean(x, "global_average_pooling2d/Mean", keep_dims=False)
    x = builder.logits(x, "predictions", num_classes, spread=2.0, confident_margin=12.0)
    x = builder.as_fully_connected(x, "predictions")
    probabilities = builder.activation("Identity", builder.values[x].softmax(dim=1), (1, num_classes))
    builder.operators.append(Operator("SOFTMAX", [x], [probabilities]))
    return builder.finish([probabilities], quantized, input_quantization=_KERAS_INPUT_QUANTIZATION)


def keras_mobilenet_v2_classifier(path: str | Path, **arguments) -> Path:
    """Write :func:`keras_mobilenet_v2_classifier_graph` (same keyword arguments) to ``path``."""
    return write_tflite(keras_mobilenet_v2_classifier_graph(**arguments), path)


def tf_slim_mobilenet_v1_classifier_graph(
    width: float = 0.25, size: int = 128, num_classes: int = IMAGENET_CLASSES_WITH_BACKGROUND, quantized: bool = True, seed: int = 0
) -> Graph:  # fmt: skip
    """TF-slim's MobileNetV1 classifier as Google released it (``mobilenet_v1_{width}_{size}_quant.tflite``):
    CONV_2D stem ``Conv2d_0`` (3x3, stride 2, ReLU6), 13 x [DEPTHWISE_CONV_2D ``Conv2d_i_depthwise``,
    CONV_2D ``Conv2d_i_pointwise``] both with ReLU6, AVERAGE_POOL_2D, CONV_2D logits, RESHAPE,
    SOFTMAX. Channels ``max(int(c * width), 8)`` (TF-slim's depth multiplier, cut off)."""

    def depth(channels: int) -> int:
        return max(int(channels * width), 8)

    builder = _Builder(seed, "input", size, _probe(size, seed))
    scope = "MobilenetV1/MobilenetV1"
    x = builder.conv(builder.input, f"{scope}/Conv2d_0", depth(_STEM_CHANNELS), kernel=3, stride=2)
    for number, (stride, channels) in enumerate(_V1_LAYERS, start=1):
        x = builder.conv(x, f"{scope}/Conv2d_{number}_depthwise", 0, kernel=3, stride=stride, depthwise=True)
        x = builder.conv(x, f"{scope}/Conv2d_{number}_pointwise", depth(channels))
    x = builder.global_average_pool(x, "MobilenetV1/Logits/AvgPool_1a/AvgPool")
    x = builder.logits(x, "MobilenetV1/Logits/Conv2d_1c_1x1", num_classes, spread=2.0, confident_margin=12.0)
    shape = builder.constant("MobilenetV1/Logits/SpatialSqueeze", np.array([1, num_classes], dtype=np.int32))
    squeezed = builder.activation("MobilenetV1/Logits/SpatialSqueeze1", builder.values[x], (1, num_classes))
    builder.operators.append(Operator("RESHAPE", [x, shape], [squeezed]))
    probabilities = builder.activation("MobilenetV1/Predictions/Reshape_1", builder.values[x].softmax(dim=1), (1, num_classes))  # fmt: skip
    builder.operators.append(Operator("SOFTMAX", [squeezed], [probabilities]))
    return builder.finish([probabilities], quantized)


def tf_slim_mobilenet_v1_classifier(path: str | Path, **arguments) -> Path:
    """Write :func:`tf_slim_mobilenet_v1_classifier_graph` (same keyword arguments) to ``path``."""
    return write_tflite(tf_slim_mobilenet_v1_classifier_graph(**arguments), path)


def mobilenet_v1_start(path: str | Path, size: int = 96, seed: int = 0) -> Path:
    """A graph outside the converter's families, shaped as TF-slim's MobileNetV1 begins (float32):
    CONV_2D stem, DEPTHWISE_CONV_2D, then a 1x1 CONV_2D *with* ReLU6 (V1's pointwise conv, where
    MobileNetV2's projection is linear), global pool, 1x1 conv logits, RESHAPE, SOFTMAX. Its 8 and
    16 channels make it no MobileNet one would train, only a graph the walk leaves at V1's place."""
    builder = _Builder(seed, "input", size, _probe(size, seed))
    x = builder.conv(builder.input, "MobilenetV1/MobilenetV1/Conv2d_0", 8, kernel=3, stride=2)
    x = builder.conv(x, "MobilenetV1/MobilenetV1/Conv2d_1_depthwise", 0, kernel=3, depthwise=True)
    x = builder.conv(x, "MobilenetV1/MobilenetV1/Conv2d_1_pointwise", 16)
    x = builder.global_average_pool(x, "MobilenetV1/Logits/AvgPool_1a/AvgPool")
    x = builder.logits(x, "MobilenetV1/Logits/Conv2d_1c_1x1", 11, spread=2.0)
    shape = builder.constant("MobilenetV1/Logits/SpatialSqueeze", np.array([1, 11], dtype=np.int32))
    squeezed = builder.activation("MobilenetV1/Logits/SpatialSqueeze1", builder.values[x], (1, 11))
    builder.operators.append(Operator("RESHAPE", [x, shape], [squeezed]))
    probabilities = builder.activation("MobilenetV1/Predictions/Reshape_1", builder.values[x].softmax(dim=1), (1, 11))  # fmt: skip
    builder.operators.append(Operator("SOFTMAX", [squeezed], [probabilities]))
    return write_tflite(builder.finish([probabilities], quantized=False), path)


def edgetpu_compiled(path: str | Path, size: int = 224, num_classes: int = IMAGENET_CLASSES_WITH_BACKGROUND) -> Path:
    """A file as the Edge TPU compiler writes one (``*_edgetpu.tflite``): uint8 image in, uint8
    scores out, and between them one custom operator ``edgetpu-custom-op`` in place of every
    layer (its weights are in the operator's opaque options, left empty here: nothing reads them)."""
    image = Tensor("input", (1, size, size, 3), np.dtype(np.uint8), scale=np.array([1 / 128], np.float32), zero_point=np.array([128]))  # fmt: skip
    scores = Tensor("MobilenetV2/Predictions/Softmax", (1, num_classes), np.dtype(np.uint8), scale=np.array([1 / 256], np.float32), zero_point=np.array([0]))  # fmt: skip
    graph = Graph([image, scores], [Operator("CUSTOM:edgetpu-custom-op", [0], [1])], [0], [1])
    return write_tflite(graph, path)


def deeplab_v3_mobilenet_v2_graph(
    width: float = 1.0, size: int = 513, num_classes: int = 21, output_stride: int = 16, quantized: bool = True, seed: int = 0
) -> Graph:  # fmt: skip
    """The graph that :func:`deeplab_v3_mobilenet_v2` writes (same arguments)."""
    if output_stride not in (8, 16):
        raise ValueError(f"DeepLab's output stride is 8 or 16, got {output_stride}")
    probe = _probe(size, seed)
    builder = _Builder(seed, "MobilenetV2/MobilenetV2/input", size, probe)
    # DeepLab builds narrow backbones with channels rounded to 1 (feature_extractor.py), not 8.
    features = builder.backbone(width, 8 if width == 1.0 else 1, output_stride)
    feature_size = builder.graph_shape(features)[1:3]
    probe_feature_size = tuple(builder.values[features].shape[2:])
    pooled = builder.global_average_pool(features, "AvgPool2D/AvgPool")
    aspp0 = builder.conv(features, "aspp0", _DEEPLAB_CHANNELS, activation="RELU")
    image_pooling = builder.conv(pooled, "image_pooling", _DEEPLAB_CHANNELS, activation="RELU")
    image_size_tensor = builder.constant("strided_slice_4", np.array([size, size], dtype=np.int32))
    feature_size_tensor = builder.constant("ResizeBilinear/size", np.array(feature_size, dtype=np.int32))
    dimension = builder.constant("ArgMax/dimension", np.array(3, dtype=np.int32))
    builder.lead += [image_size_tensor, feature_size_tensor, dimension]
    broadcast = builder.resize_bilinear(image_pooling, feature_size_tensor, "ResizeBilinear", probe_feature_size)
    # DeepLab concatenates the image pooling first (torchvision's ASPP puts it last).
    both = torch.cat([builder.values[broadcast], builder.values[aspp0]], dim=1)
    channels = builder.graph_shape(broadcast)[3] + builder.graph_shape(aspp0)[3]
    concat = builder.activation("concat", both, (*builder.graph_shape(aspp0)[:3], channels))
    builder.operators.append(Operator("CONCATENATION", [broadcast, aspp0], [concat], {"axis": 3, "activation": "NONE"}))
    projection = builder.conv(concat, "concat_projection", _DEEPLAB_CHANNELS, activation="RELU")
    logits = builder.logits(projection, "logits/semantic", num_classes, spread=2.0, present=5)
    # DeepLab resizes the logits to the feature size (a no-op) and then to the image.
    logits = builder.resize_bilinear(logits, feature_size_tensor, "ResizeBilinear_1", probe_feature_size)
    upsampled = builder.resize_bilinear(logits, image_size_tensor, "ResizeBilinear_2", tuple(probe.shape[2:]))
    labels = builder.tensor("ArgMax", (1, size, size), np.int64)
    builder.operators.append(Operator("ARG_MAX", [upsampled, dimension], [labels]))
    return builder.finish([labels], quantized, requantize_before_concat=True)


def deeplab_v3_mobilenet_v2(
    path: str | Path,
    width: float = 1.0,
    size: int = 513,
    num_classes: int = 21,
    output_stride: int = 16,
    quantized: bool = True,
    seed: int = 0,
) -> Path:
    """Write DeepLab v3 on MobileNetV2 with the mobile head as Google released it
    (``deeplabv3_mnv2_pascal_quant.tflite``), with random folded weights.

    Args:
        path: the ``.tflite`` file to write.
        width: the backbone's depth multiplier (Google: 1.0 and 0.5); narrow backbones have channels
            rounded to multiples of 1 as DeepLab builds them, the head keeps 256 channels.
        size: input height and width (Google: 513). Any size works; DeepLab's own are 16k + 1
            (65, 129, 257, 513), which keep the feature map's corners on the image's corners.
        num_classes: logits (Pascal VOC: 21, 0 the background).
        output_stride: 16 (Google's file: the last stride-2 conv at stride 1, later depthwise convs
            dilated 2) or 8 (dilations 2 and 4).
        quantized: uint8 as Google's file (uint8 pixels in); ``False``: float32, input
            ``(pixel - 128) / 128``. Either way the output is the int64 label map.
        seed: the random weights (and the probe images their scaling is measured on).

    Operators: the backbone as the classifier's (to ``expanded_conv_16/project``), then
    AVERAGE_POOL_2D (image pooling), CONV_2D ``aspp0`` (ReLU), CONV_2D ``image_pooling`` (ReLU),
    RESIZE_BILINEAR to the feature size, [QUANTIZE to the concatenation's scale], CONCATENATION
    (image pooling first), CONV_2D ``concat_projection`` (ReLU), CONV_2D ``logits/semantic``,
    RESIZE_BILINEAR to the feature size, RESIZE_BILINEAR to the image (align_corners), ARG_MAX.
    Returns ``path``.
    """
    return write_tflite(deeplab_v3_mobilenet_v2_graph(width, size, num_classes, output_stride, quantized, seed), path)
