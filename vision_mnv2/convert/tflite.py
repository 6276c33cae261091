"""Google's released MobileNet models, read from their TFLite files into this project's networks.

These families of graph are recognised (:data:`SUPPORTED_FAMILIES`), quantised (uint8 / int8, per
tensor or per output channel) or float (float32, float16):

* MobileNetV2 classifiers, any width, input size and class count: stem, 17 bottlenecks, the last
  1x1 conv, global average pool, logits as a 1x1 conv (Google's ImageNet releases: 1001 outputs,
  index 0 = background) or as a fully connected layer (the iNaturalist releases). TF-slim's graphs
  pool with AVERAGE_POOL_2D; TF2 / Keras graphs with MEAN, and ``tf.keras.applications`` pads the
  stride-2 convolutions with explicit PAD operators (ZeroPadding2D) before VALID convolutions,
  which is TF's "SAME" at the graph's size.
* TF-slim MobileNetV1 classifiers, any width and input size: stem and 13 depthwise-separable
  layers (both convolutions with ReLU6), global average pool, logits: ``backbone=mobilenet_v1``.
* DeepLab v3 on MobileNetV2 with the mobile head (1x1 conv ``aspp0`` + image pooling, concatenated,
  ``concat_projection``, ``logits/semantic``, bilinear upsampling): this project's ``aspp=False``,
  output stride 16 or 8, width 1.0 or narrower.

Everything the builder needs is read off the graph, not asked of the caller: widths from tensor
shapes, output stride from strides and dilations, input size from the input, classes from the
logits. The graph is walked operator by operator from the input; a graph outside the families is
refused with one message (:class:`TFLiteUnsupportedGraph`) naming the operator and tensor where the
walk left them, and the families that are supported.

TensorFlow conventions (tensorflow/models: ``research/slim/nets/mobilenet``,
``research/deeplab/core/feature_extractor.py``), and how they are reproduced:

* "SAME" padding: ``tf_padding=True`` (pads (0, 1) at stride 2 on even sizes, where PyTorch pads (1, 1)).
* DeepLab upsamples with ``align_corners=True``: read from the graph's resize, ``align_corners=True``.
* DeepLab concatenates image pooling *first*; torchvision's ASPP puts it last: the projection's input
  channels are permuted, the network is not changed.
* DeepLab rounds narrow widths to multiples of 1, not 8 (24 -> 12 at width 0.5): ``round_nearest=1``.
  Expansions are multiples of 8 whatever the rounding, as the backbone builds them.
* Batch norm is folded into the convolutions: the weights go into the convs, and the batch norms
  get statistics measured on calibration images with the output unchanged
  (:func:`vision_mnv2.convert.calibrate_batch_norm`), so that the network fine-tunes.
* The input scaling is read from the input's quantisation: a uint8 input of scale ``s`` and zero
  point ``z`` means the float network sees ``s * (pixel - z)`` (TF-slim: ``(pixel - 128) / 128``,
  Keras: ``(pixel - 127) / 127.5``), which becomes the model's ``normalization``; a rescaling in the
  graph (a Keras ``Rescaling`` layer: MUL, ADD by constants) is read too, its input pixels 0..255.
  A float input without one says nothing: TF's convention, ``(pixel - 128) / 128`` (inputs in
  [-1, 1]), is assumed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .batch_norm import calibrate_batch_norm, calibration_images

__all__ = [
    "TFLiteGraph",
    "TFLiteImportError",
    "SUPPORTED_FAMILIES",
    "TFLiteOperator",
    "TFLiteTensor",
    "TFLiteUnsupportedGraph",
    "dequantize",
    "load_tflite",
    "read_tflite",
    "tf_model_input",
]

# TFLite TensorType -> numpy; other types (strings, resources, 4-bit) are never weights here.
_DTYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
    10: np.float64,
}
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
# Operators that may sit after the network's last layer without changing what it computes.
_OUTPUT_OPS = {"RESHAPE", "SQUEEZE", "SOFTMAX", "ARG_MAX", "QUANTIZE", "DEQUANTIZE"}
NUM_BLOCKS = 17
NUM_SEPARABLE_LAYERS = 13  # MobileNetV1
IMAGENET_WITH_BACKGROUND = 1001
# Widths Google released; tried first when the graph's widths are matched to a builder width.
_KNOWN_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_KNOWN_V1_WIDTHS = (0.25, 0.5, 0.75, 1.0)


# Named in every refusal of a graph, so that a user learns what the converter takes, not only where
# their file differs from it.
SUPPORTED_FAMILIES = (
    "MobileNetV2 classifier, TF-slim or TF2/Keras (any width and input size; average pool or MEAN; "
    "logits a 1x1 convolution or fully connected)",
    "TF-slim MobileNetV1 classifier (any width and input size)",
    "DeepLab v3 MobileNetV2 with the mobile head (output stride 8 or 16)",
)
# The Edge TPU compiler replaces the network by one custom operator that only the Edge TPU runs.
_EDGETPU_OPERATOR = "CUSTOM:edgetpu-custom-op"


class TFLiteImportError(ValueError):
    """A TFLite file that cannot be read, or a graph that is not one this module recognises."""


class TFLiteUnsupportedGraph(TFLiteImportError):
    """A readable TFLite model whose graph is outside :data:`SUPPORTED_FAMILIES` (or compiled for the
    Edge TPU): the message says where the graph leaves them, and lists them."""


@dataclass
class TFLiteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type_name: str
    data: np.ndarray | None  # contents of a constant, as stored (before dequantisation)
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0


@dataclass
class TFLiteOperator:
    index: int
    op: str
    inputs: tuple[int, ...]  # -1: an optional input left out
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass
class TFLiteGraph:
    """The one subgraph of a TFLite model: tensors (with constant data) and operators in order."""

    path: str
    tensors: list[TFLiteTensor]
    operators: list[TFLiteOperator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def __post_init__(self) -> None:
        self._producer: dict[int, TFLiteOperator] = {}
        self._consumers: dict[int, list[TFLiteOperator]] = {}
        for op in self.operators:
            for t in op.outputs:
                self._producer[t] = op
            for t in op.inputs:
                if t >= 0:
                    self._consumers.setdefault(t, []).append(op)

    def producer(self, tensor: int) -> TFLiteOperator | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: int) -> list[TFLiteOperator]:
        return self._consumers.get(tensor, [])


def dequantize(
    data: np.ndarray, scale: np.ndarray | None = None, zero_point: np.ndarray | None = None, axis: int = 0
) -> np.ndarray:
    """Real values of stored ones: ``scale * (q - zero_point)``, per tensor (one scale) or per
    channel along ``axis`` (one scale per index of that axis); float data is returned as float32."""
    values = np.asarray(data).astype(np.float64)
    if scale is None or np.size(scale) == 0:
        if not np.issubdtype(np.asarray(data).dtype, np.floating):
            raise ValueError(f"integer data of type {np.asarray(data).dtype} without a quantisation scale")
        return values.astype(np.float32)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    zero_point = np.zeros_like(scale) if zero_point is None or np.size(zero_point) == 0 else zero_point
    zero_point = np.asarray(zero_point, dtype=np.float64).reshape(-1)
    if scale.size > 1:
        if values.ndim == 0 or scale.size != values.shape[axis]:
            raise ValueError(f"{scale.size} per-channel scales for axis {axis} of a tensor of shape {values.shape}")
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero_point = (zero_point if zero_point.size == scale.size else np.full(scale.size, zero_point[0])).reshape(
            shape
        )
    return (scale * (values - zero_point)).astype(np.float32)


def _options(op, options_type: int) -> dict:
    """The builtin options of the operators this module reads (others: empty)."""
    import tflite  # noqa: PLC0415

    table = op.BuiltinOptions()
    if table is None:
        return {}
    kinds = tflite.BuiltinOptions
    if options_type in (kinds.Conv2DOptions, kinds.DepthwiseConv2DOptions):
        cls = tflite.Conv2DOptions if options_type == kinds.Conv2DOptions else tflite.DepthwiseConv2DOptions
        o = cls()
        o.Init(table.Bytes, table.Pos)
        options = {
            "padding": _PADDING.get(o.Padding(), o.Padding()),
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": _ACTIVATION.get(o.FusedActivationFunction(), o.FusedActivationFunction()),
        }
        if options_type == kinds.DepthwiseConv2DOptions:
            options["depth_multiplier"] = o.DepthMultiplier()
        return options
    if options_type == kinds.Pool2DOptions:
        o = tflite.Pool2DOptions()
        o.Init(table.Bytes, table.Pos)
        return {
            "padding": _PADDING.get(o.Padding(), o.Padding()),
            "stride": (o.StrideH(), o.StrideW()),
            "filter": (o.FilterHeight(), o.FilterWidth()),
            "activation": _ACTIVATION.get(o.FusedActivationFunction(), o.FusedActivationFunction()),
        }
    if options_type in (kinds.AddOptions, kinds.MulOptions, kinds.SubOptions):
        cls = {kinds.AddOptions: tflite.AddOptions, kinds.MulOptions: tflite.MulOptions, kinds.SubOptions: tflite.SubOptions}[options_type]  # fmt: skip
        o = cls()
        o.Init(table.Bytes, table.Pos)
        return {"activation": _ACTIVATION.get(o.FusedActivationFunction(), o.FusedActivationFunction())}
    if options_type == kinds.ConcatenationOptions:
        o = tflite.ConcatenationOptions()
        o.Init(table.Bytes, table.Pos)
        return {
            "axis": o.Axis(),
            "activation": _ACTIVATION.get(o.FusedActivationFunction(), o.FusedActivationFunction()),
        }
    if options_type == kinds.FullyConnectedOptions:
        o = tflite.FullyConnectedOptions()
        o.Init(table.Bytes, table.Pos)
        return {
            "activation": _ACTIVATION.get(o.FusedActivationFunction(), o.FusedActivationFunction()),
            # 0 = DEFAULT (output x input); the shuffled int8 layout is a different arrangement
            "weights_format": o.WeightsFormat(),
        }
    if options_type == kinds.ReducerOptions:  # MEAN
        o = tflite.ReducerOptions()
        o.Init(table.Bytes, table.Pos)
        return {"keep_dims": bool(o.KeepDims())}
    if options_type == kinds.ResizeBilinearOptions:
        o = tflite.ResizeBilinearOptions()
        o.Init(table.Bytes, table.Pos)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    return {}


def read_tflite(path: str | os.PathLike) -> TFLiteGraph:
    """Parse a TFLite flatbuffer (with the ``tflite`` package) into tensors, constants and operators."""
    try:
        import tflite  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("reading TFLite files needs the 'tflite' package: pip install 'vision-mnv2[tflite]'") from exc
    path = Path(path).expanduser()
    if not path.is_file():
        raise TFLiteImportError(f"TFLite file {str(path)!r} does not exist")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise TFLiteImportError(f"{str(path)!r} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        model = tflite.Model.GetRootAs(buf, 0)
        if model.SubgraphsLength() != 1:
            raise TFLiteImportError(f"{str(path)!r} has {model.SubgraphsLength()} subgraphs; expected one")
        graph = model.Subgraphs(0)
        codes = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
            if name == "CUSTOM":
                name = f"CUSTOM:{(code.CustomCode() or b'').decode()}"
            codes.append(name)
        tensors = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            dtype = _DTYPES.get(t.Type())
            data = None
            buffer = model.Buffers(t.Buffer()) if t.Buffer() > 0 else None
            if buffer is not None:
                raw = None
                if buffer.DataLength() > 0:
                    raw = buffer.DataAsNumpy().tobytes()
                elif buffer.Offset() > 1:  # large models keep constants after the flatbuffer
                    raw = buf[buffer.Offset() : buffer.Offset() + buffer.Size()]
                if raw is not None and dtype is not None:
                    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                    if len(raw) != expected:
                        raise TFLiteImportError(
                            f"{str(path)!r}: tensor {t.Name().decode()!r} holds {len(raw)} bytes, "
                            f"its shape {shape} and type need {expected}"
                        )
                    data = np.frombuffer(raw, dtype=dtype).reshape(shape)
            q = t.Quantization()
            scale = zero_point = None
            axis = 0
            if q is not None and q.ScaleLength() > 0:
                scale = q.ScaleAsNumpy().astype(np.float32)
                zero_point = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else None
                axis = q.QuantizedDimension()
            type_name = np.dtype(dtype).name if dtype is not None else f"type {t.Type()}"
            tensors.append(TFLiteTensor(i, t.Name().decode(), shape, type_name, data, scale, zero_point, axis))
        operators = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            operators.append(
                TFLiteOperator(
                    i,
                    codes[op.OpcodeIndex()],
                    tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else (),
                    tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else (),
                    _options(op, op.BuiltinOptionsType()),
                )
            )
        inputs = tuple(int(x) for x in graph.InputsAsNumpy())
        outputs = tuple(int(x) for x in graph.OutputsAsNumpy())
    except TFLiteImportError:
        raise
    except Exception as exc:  # a truncated or corrupt flatbuffer fails somewhere in the parser
        raise TFLiteImportError(f"cannot parse TFLite file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    return TFLiteGraph(str(path), tensors, operators, inputs, outputs)


def _builtin_names() -> dict[int, str]:
    try:
        from tflite.BuiltinOperator import BuiltinOperator  # noqa: PLC0415
    except ImportError:
        return {}
    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


_BUILTIN_NAMES = _builtin_names()


# --------------------------------------------------------------------------------------------------
# Recognising the graph


@dataclass
class _Block:
    expand: TFLiteOperator | None
    depthwise: TFLiteOperator
    project: TFLiteOperator
    add: TFLiteOperator | None


class _Walker:
    """Walks the graph from the input and names each operator's role in the network."""

    def __init__(self, graph: TFLiteGraph) -> None:
        self.g = graph
        self.visited: set[int] = set()
        # operator index -> the PAD operator in front of it (Keras' ZeroPadding2D before a VALID conv)
        self.padded: dict[int, TFLiteOperator] = {}
        # The graph's own input rescaling (a Keras Rescaling layer): the stem reads a * input + b.
        self.rescaling: tuple[float, float] | None = None

    def error(self, op: TFLiteOperator | None, tensor: int | None, problem: str) -> TFLiteUnsupportedGraph:
        """The graph is outside the supported families: where, what was found, and what is supported."""
        where = []
        if op is not None:
            where.append(f"operator {op.index} ({op.op})")
        if tensor is not None and tensor >= 0:
            # TF's converter names a tensor after every op fused into it, joined by ';' (hundreds of
            # characters); the first name says where it is in the network.
            where.append(f"tensor {self.g.tensors[tensor].name.split(';')[0]!r}")
        return TFLiteUnsupportedGraph(
            f"{self.g.path}: not a supported graph: at {', '.join(where) or 'the graph'}: {problem}. "
            f"Supported: {'; '.join(SUPPORTED_FAMILIES)}"
        )

    # Activation re-quantisations (QUANTIZE between two activations) change no value the float
    # network computes: the walk looks through them. A zero PAD is looked through too and kept with
    # the operator it feeds, whose padding (:meth:`conv`) it is.
    def consumers(self, tensor: int) -> list[TFLiteOperator]:
        found = []
        for op in self.g.consumers(tensor):
            if op.op == "QUANTIZE" and not self._is_constant(op.inputs[0]):
                self.visited.add(op.index)
                found += self.consumers(op.outputs[0])
            elif op.op == "PAD" and self._spatial_pads(op) is not None:
                for following in self.consumers(op.outputs[0]):
                    self.padded[following.index] = op
                    found.append(following)
            else:
                found.append(op)
        return found

    def _spatial_pads(self, pad: TFLiteOperator) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(top, bottom), (left, right) of a PAD that pads only height and width, else ``None``."""
        if len(pad.inputs) < 2 or not self._is_constant(pad.inputs[1]):
            return None
        pads = np.asarray(self.g.tensors[pad.inputs[1]].data).reshape(-1, 2)
        if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
            return None
        return (int(pads[1][0]), int(pads[1][1])), (int(pads[2][0]), int(pads[2][1]))

    def source(self, tensor: int) -> int:
        op = self.g.producer(tensor)
        while op is not None and op.op == "QUANTIZE" and not self._is_constant(op.inputs[0]):
            tensor = op.inputs[0]
            op = self.g.producer(tensor)
        return tensor

    def _is_constant(self, tensor: int) -> bool:
        return tensor >= 0 and self.g.tensors[tensor].data is not None

    def shape(self, tensor: int) -> tuple[int, ...]:
        return self.g.tensors[tensor].shape

    def next(self, tensor: int, kinds: Sequence[str], what: str, skip: Sequence[str] = ("ADD",)) -> TFLiteOperator:
        ops = [op for op in self.consumers(tensor) if op.op not in skip]
        if len(ops) != 1 or ops[0].op not in kinds:
            found = ", ".join(f"{op.op} (operator {op.index})" for op in ops) or "nothing"
            raise self.error(
                ops[0] if len(ops) == 1 else None,
                tensor,
                f"expected {what} ({'/'.join(kinds)}) reading this tensor, found {found}",
            )
        return ops[0]

    def conv(
        self,
        op: TFLiteOperator,
        what: str,
        kernel: int,
        activation: str,
        stride: int | None = 1,
        bias: bool | None = None,
    ) -> None:
        """Check that ``op`` is the conv this role needs; mark it as used."""
        weight = op.inputs[1]
        shape = self.shape(weight)
        if len(shape) != 4 or shape[1:3] != (kernel, kernel):
            raise self.error(op, weight, f"{what}: expected a {kernel}x{kernel} kernel, the weights have shape {shape}")
        if op.op == "DEPTHWISE_CONV_2D" and (op.options.get("depth_multiplier", 1) not in (1, 0) or shape[0] != 1):
            raise self.error(op, weight, f"{what}: depthwise convolution with a channel multiplier is not supported")
        if op.options.get("activation") != activation:
            raise self.error(
                op,
                op.outputs[0],
                f"{what}: expected fused activation {activation}, found {op.options.get('activation')}",
            )
        if stride is not None and op.options.get("stride") != (stride, stride):
            raise self.error(op, op.outputs[0], f"{what}: expected stride {stride}, found {op.options.get('stride')}")
        pad = self.padded.get(op.index)
        if kernel > 1 and not (op.options.get("padding") == "SAME" and pad is None):
            # Keras pads explicitly (ZeroPadding2D) and convolves VALID: the same as TF's SAME
            # when the pads are SAME's at this size.
            source = pad.inputs[0] if pad is not None else op.inputs[0]
            same = _same_pads(self.shape(source)[1:3], kernel, op.options.get("stride", (1, 1)), op.options.get("dilation", (1, 1)))  # fmt: skip
            if pad is None or op.options.get("padding") != "VALID" or self._spatial_pads(pad) != same:
                found = f"{op.options.get('padding')}" + (f" after PAD {self._spatial_pads(pad)}" if pad else "")
                raise self.error(op, op.outputs[0], f"{what}: expected SAME padding (or a PAD of {same} and VALID), found {found}")  # fmt: skip
            self.visited.add(pad.index)
        has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
        if bias and not has_bias:
            raise self.error(op, op.outputs[0], f"{what}: expected a bias")
        self.visited.add(op.index)

    def fully_connected(self, op: TFLiteOperator, tensor: int, what: str) -> None:
        """Check that ``op`` is a linear layer (no activation, with bias) on the ``tensor`` it reads
        (its channels flattened: the pooled features); mark it as used."""
        weight = op.inputs[1]
        shape, channels = self.shape(weight), self.shape(tensor)[-1]
        if len(shape) != 2 or shape[1] != channels:
            raise self.error(
                op, weight, f"{what}: expected fully connected weights of shape (classes, {channels}), found {shape}"
            )
        if op.options.get("activation") != "NONE":
            raise self.error(op, op.outputs[0], f"{what}: expected no fused activation, found {op.options.get('activation')}")  # fmt: skip
        if op.options.get("weights_format", 0) != 0:
            raise self.error(op, weight, f"{what}: weights in the shuffled layout {op.options['weights_format']}")
        if not (len(op.inputs) > 2 and op.inputs[2] >= 0):
            raise self.error(op, op.outputs[0], f"{what}: expected a bias")
        self.visited.add(op.index)

    def stem(self) -> TFLiteOperator:
        """The first convolution, on the one image input."""
        if len(self.g.inputs) != 1:
            raise self.error(None, None, f"expected one input image, the graph has {len(self.g.inputs)} inputs")
        image = self.g.inputs[0]
        shape = self.shape(image)
        if len(shape) != 4 or shape[3] != 3:
            raise self.error(None, image, f"expected an N x H x W x 3 image input, found shape {shape}")
        stem = self.next(self._rescaled(image), ("CONV_2D",), "the stem convolution")
        self.conv(stem, "stem", kernel=3, activation="RELU6", stride=2)
        return stem

    def _rescaled(self, image: int) -> int:
        """Through the operators that scale and shift the image by constants before the stem (a
        Keras ``Rescaling`` layer: MUL, then ADD or SUB); records them as :attr:`rescaling`."""
        tensor, a, b = image, 1.0, 0.0
        while True:
            ops = self.consumers(tensor)
            if len(ops) != 1 or ops[0].op not in ("MUL", "ADD", "SUB") or len(ops[0].inputs) != 2:
                break
            op = ops[0]
            constants = [t for t in op.inputs if self._is_constant(t) and np.size(self.g.tensors[t].data) == 1]
            if len(constants) != 1 or op.options.get("activation", "NONE") != "NONE":
                break
            value = float(dequantize(self.g.tensors[constants[0]].data, self.g.tensors[constants[0]].scale, self.g.tensors[constants[0]].zero_point).reshape(-1)[0])  # fmt: skip
            if op.op == "MUL":
                if value <= 0:
                    raise self.error(
                        op, op.outputs[0], f"the input is multiplied by {value}: not a rescaling of pixels"
                    )
                a, b = a * value, b * value
            elif op.op == "ADD":
                b += value
            elif op.inputs[1] == constants[0]:  # x - c
                b -= value
            else:
                break  # c - x flips the image: not a rescaling
            self.visited.add(op.index)
            tensor = op.outputs[0]
        if tensor != image:
            self.rescaling = (a, b)
        return tensor

    def is_mobilenet_v1(self, stem: TFLiteOperator) -> bool:
        """MobileNetV1 and V2 begin alike (stem, depthwise conv, 1x1 conv); V1's 1x1 conv has a
        ReLU6 where V2's first projection is linear."""
        first = self.consumers(stem.outputs[0])
        if len(first) != 1 or first[0].op != "DEPTHWISE_CONV_2D":
            return False
        second = self.consumers(first[0].outputs[0])
        return len(second) == 1 and second[0].op == "CONV_2D" and second[0].options.get("activation") == "RELU6"

    def separable_layers(self, stem: TFLiteOperator) -> tuple[list[tuple[TFLiteOperator, TFLiteOperator]], int]:
        """MobileNetV1's 13 depthwise-separable layers after the stem: (depthwise, pointwise) pairs
        and the tensor the head reads."""
        tensor, layers = stem.outputs[0], []
        while True:
            ops = self.consumers(tensor)
            if len(ops) != 1 or ops[0].op != "DEPTHWISE_CONV_2D":
                break
            depthwise = ops[0]
            number = len(layers) + 1
            self.conv(depthwise, f"separable layer {number} depthwise", kernel=3, activation="RELU6", stride=None)
            if depthwise.options.get("stride") not in ((1, 1), (2, 2)):
                raise self.error(depthwise, depthwise.outputs[0], f"unsupported stride {depthwise.options['stride']}")
            pointwise = self.next(depthwise.outputs[0], ("CONV_2D",), "the pointwise convolution")
            self.conv(pointwise, f"separable layer {number} pointwise", kernel=1, activation="RELU6")
            layers.append((depthwise, pointwise))
            tensor = pointwise.outputs[0]
        if len(layers) != NUM_SEPARABLE_LAYERS:
            following = self.consumers(tensor)
            raise self.error(
                following[0] if following else None,
                tensor,
                f"found {len(layers)} MobileNetV1 separable layers where there are {NUM_SEPARABLE_LAYERS}; "
                "the walk stopped here",
            )
        return layers, tensor

    def backbone(self, stem: TFLiteOperator) -> tuple[list[_Block], int]:
        """MobileNetV2's 17 bottlenecks after the stem; returns them and the tensor the head reads."""
        tensor = stem.outputs[0]
        blocks: list[_Block] = []
        while True:
            ops = [op for op in self.consumers(tensor) if op.op != "ADD"]
            if len(ops) != 1:
                break
            op = ops[0]
            expand = None
            if op.op == "CONV_2D" and self.shape(op.inputs[1])[1:3] == (1, 1):
                following = [o for o in self.consumers(op.outputs[0])]
                if len(following) != 1 or following[0].op != "DEPTHWISE_CONV_2D":
                    break  # a 1x1 conv that feeds no depthwise conv: the classifier's last layer
                expand, op = op, following[0]
                self.conv(expand, f"bottleneck {len(blocks) + 1} expansion", kernel=1, activation="RELU6")
            elif op.op != "DEPTHWISE_CONV_2D":
                break
            depthwise = op
            self.conv(depthwise, f"bottleneck {len(blocks) + 1} depthwise", kernel=3, activation="RELU6", stride=None)
            if depthwise.options.get("stride") not in ((1, 1), (2, 2)):
                raise self.error(depthwise, depthwise.outputs[0], f"unsupported stride {depthwise.options['stride']}")
            project = self.next(depthwise.outputs[0], ("CONV_2D",), "the projection")
            self.conv(project, f"bottleneck {len(blocks) + 1} projection", kernel=1, activation="NONE")
            out = project.outputs[0]
            add = None
            # The residual adds the block's input; an ADD reading only ``out`` is the next block's.
            residual = {self.source(out), self.source(tensor)}
            adds = [o for o in self.consumers(out) if o.op == "ADD" and {self.source(t) for t in o.inputs} == residual]
            if adds:
                add = adds[0]
                if add.options.get("activation", "NONE") != "NONE":
                    raise self.error(add, add.outputs[0], "a residual add with an activation")
                self.visited.add(add.index)
                out = add.outputs[0]
            blocks.append(_Block(expand, depthwise, project, add))
            tensor = out
        if len(blocks) != NUM_BLOCKS:
            following = [op for op in self.consumers(tensor) if op.op != "ADD"]
            raise self.error(
                following[0] if following else None,
                tensor,
                f"found {len(blocks)} MobileNetV2 bottlenecks where there are {NUM_BLOCKS}; the walk stopped here",
            )
        return blocks, tensor

    def global_pool(self, op: TFLiteOperator, tensor: int, what: str) -> None:
        """An average over the whole map: TF-slim's AVERAGE_POOL_2D or TF2 / Keras' MEAN."""
        size = self.shape(tensor)[1:3]
        if op.op == "MEAN":
            axes = self.g.tensors[op.inputs[1]].data if len(op.inputs) > 1 and self._is_constant(op.inputs[1]) else None
            if axes is None or sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) != [1, 2]:
                raise self.error(op, tensor, f"{what}: expected a MEAN over height and width (axes 1, 2), found axes {axes}")  # fmt: skip
        elif op.options.get("filter") != size or op.options.get("padding") != "VALID":
            raise self.error(
                op, tensor, f"{what}: expected a VALID average pool over the whole {size} map, found {op.options}"
            )
        self.visited.add(op.index)

    def flattened(self, tensor: int) -> int:
        """The tensor after RESHAPE / SQUEEZE operators that only drop sizes of 1 (a pooled
        1 x 1 x 1 x C map to 1 x C, before a fully connected layer)."""
        while True:
            ops = self.consumers(tensor)
            if len(ops) != 1 or ops[0].op not in ("RESHAPE", "SQUEEZE"):
                return tensor
            shape, out = self.shape(tensor), self.shape(ops[0].outputs[0])
            if [d for d in shape if d != 1] != [d for d in out if d != 1]:
                return tensor
            self.visited.add(ops[0].index)
            tensor = ops[0].outputs[0]

    def check_all_used(self) -> None:
        """Every operator is part of the recognised network or an output-side reshape/softmax/argmax."""
        for op in self.g.operators:
            if op.index not in self.visited and op.op not in _OUTPUT_OPS:
                raise self.error(
                    op, op.outputs[0] if op.outputs else None, "operator not part of a recognised MobileNetV2 graph"
                )


def _same_pads(size: Sequence[int], kernel: int, stride: Sequence[int], dilation: Sequence[int]):
    """TF's "SAME" padding of a ``size`` map: (before, after) per side, the extra pixel after."""
    pads = []
    for length, s, d in zip(size, stride, dilation):
        out = -(-length // s)
        total = max((out - 1) * s + (kernel - 1) * d + 1 - length, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _snap(value: float, step: float) -> float:
    """``value`` on the grid of ``step`` when it is there to float32's precision."""
    snapped = round(value / step) * step
    return snapped if abs(snapped - value) <= 1e-6 * max(1.0, abs(value)) else value


def _input_normalization(walker: _Walker) -> tuple[str | dict, str]:
    """The model's ``normalization``, and a sentence saying what the float network sees, from the
    input's quantisation and the graph's own rescaling (:meth:`_Walker._rescaled`; call after
    :meth:`_Walker.stem`). uint8 pixels ``p`` with scale ``s`` and zero point ``z`` are the float
    input ``s * (p - z)`` (an int8 input is fed ``p - 128``); a float input with a rescaling in the
    graph takes pixels 0..255; a float input without one says nothing: TF's convention,
    ``(p - 128) / 128``, is assumed."""
    tensor = walker.g.tensors[walker.g.inputs[0]]
    quantized = tensor.type_name in ("uint8", "int8")
    if quantized and (tensor.scale is None or np.size(tensor.scale) != 1):
        found = "no scale" if tensor.scale is None else f"{np.size(tensor.scale)} scales"
        raise walker.error(None, walker.g.inputs[0], f"a {tensor.type_name} image input needs one scale and zero point, found {found}")  # fmt: skip
    if not quantized and walker.rescaling is None:
        return "tf", "(pixel - 128) / 128, inputs in [-1, 1] (a float input: TF's convention, the graph does not say)"
    scale, offset, sources = 1.0, 0.0, []
    if quantized:
        scale = float(np.asarray(tensor.scale).reshape(-1)[0])
        zero = int(np.asarray(tensor.zero_point if tensor.zero_point is not None else [0]).reshape(-1)[0])
        offset = zero + (128 if tensor.type_name == "int8" else 0)
        sources.append("the input's quantisation")
    if walker.rescaling is not None:
        a, b = walker.rescaling
        # a * (scale * (p - offset)) + b = (a * scale) * (p - (offset - b / (a * scale)))
        scale, offset = a * scale, offset - b / (a * scale)
        sources.append("the graph's rescaling of the input" + ("" if quantized else ", pixels 0..255"))
    # float32 holds 1 / 127.5 as 0.00784314: the scale meant is a reciprocal of half-units
    scale = 1 / _snap(1 / scale, 0.5)
    offset = _snap(offset, 0.5)
    low, high = scale * (0 - offset), scale * (255 - offset)
    said = f"(pixel - {offset:g}) * {scale:.6g}, inputs in [{low:.3g}, {high:.3g}] ({' and '.join(sources)})"
    if offset == 128 and abs(scale - 1 / 128) < 1e-9:
        return "tf", said
    return {"mean": [offset / 255] * 3, "std": [1 / (255 * scale)] * 3}, said


# --------------------------------------------------------------------------------------------------
# Weights


def _constant(walker: _Walker, op: TFLiteOperator, tensor: int) -> np.ndarray:
    """A weight or bias, dequantised; float16 / int8 weights may come through a DEQUANTIZE op."""
    t = walker.g.tensors[tensor]
    if t.data is None:
        producer = walker.g.producer(tensor)
        if producer is not None and producer.op == "DEQUANTIZE" and walker._is_constant(producer.inputs[0]):
            walker.visited.add(producer.index)
            t = walker.g.tensors[producer.inputs[0]]
        else:
            raise walker.error(op, tensor, "expected constant weights")
    try:
        return dequantize(t.data, t.scale, t.zero_point, t.quantized_dimension)
    except ValueError as exc:
        raise walker.error(op, t.index, str(exc)) from exc


def _weights(walker: _Walker, op: TFLiteOperator) -> torch.Tensor:
    """The kernel in PyTorch's layout: CONV_2D O x H x W x I -> O x I x H x W; DEPTHWISE_CONV_2D
    1 x H x W x C -> C x 1 x H x W."""
    w = _constant(walker, op, op.inputs[1])
    w = w.transpose(3, 0, 1, 2) if op.op == "DEPTHWISE_CONV_2D" else w.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(w))


def _bias(walker: _Walker, op: TFLiteOperator, channels: int) -> torch.Tensor:
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        return torch.from_numpy(_constant(walker, op, op.inputs[2]).reshape(-1).copy())
    return torch.zeros(channels)


def _copy(walker: _Walker, op: TFLiteOperator, target: torch.Tensor, value: torch.Tensor, tensor: int) -> None:
    if tuple(target.shape) != tuple(value.shape):
        raise walker.error(
            op, tensor, f"weights of shape {tuple(value.shape)} do not fit the layer's {tuple(target.shape)}"
        )
    with torch.no_grad():
        target.copy_(value)


def _load_conv_bn(
    walker: _Walker, op: TFLiteOperator, conv: nn.Conv2d, bn: nn.BatchNorm2d, weight: torch.Tensor | None = None
) -> None:
    """Folded conv (weights + bias) into conv + batch norm: the batch norm is the identity plus the
    bias until :func:`calibrate_batch_norm` gives it statistics. ``weight``: the op's kernel,
    rearranged by the caller."""
    _copy(walker, op, conv.weight, _weights(walker, op) if weight is None else weight, op.inputs[1])
    bias = _bias(walker, op, conv.out_channels)
    _copy(walker, op, bn.bias, bias, op.inputs[2] if len(op.inputs) > 2 else op.outputs[0])
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) == x exactly
        bn.weight.fill_(1.0)


# --------------------------------------------------------------------------------------------------
# Building the network


def _infer_width(walker: _Walker, stem: TFLiteOperator, blocks: list[_Block], last: TFLiteOperator | None):
    """Width multiplier and channel rounding that reproduce every layer width of the graph."""
    from vision_mnv2.models.mobilenetv2 import MobileNetV2Backbone  # noqa: PLC0415

    observed = {"layer1": walker.shape(stem.inputs[1])[0]}
    for k, block in enumerate(blocks, start=2):
        observed[f"layer{k}"] = walker.shape(block.project.inputs[1])[0]
        if block.expand is not None:
            observed[f"layer{k}/expansion"] = walker.shape(block.expand.inputs[1])[0]
    if last is not None:
        observed[f"layer{NUM_BLOCKS + 2}"] = walker.shape(last.inputs[1])[0]
    estimate = observed[f"layer{NUM_BLOCKS + 1}"] / 320
    candidates = sorted({round(estimate, 2), *_KNOWN_WIDTHS}, key=lambda w: abs(w - estimate))
    for round_nearest in (8, 1):  # TF-slim and torchvision; DeepLab's narrow models
        for width in candidates:
            with torch.device("meta"):  # only the layer widths are wanted: no weights allocated
                backbone = MobileNetV2Backbone(width, round_nearest=round_nearest)
            built = {name: info.channels for name, info in backbone.feature_info.items() if name in observed}
            if built == observed:
                return width, round_nearest
    raise walker.error(
        blocks[-1].project,
        blocks[-1].project.outputs[0],
        f"layer widths {list(observed.values())} match no MobileNetV2 width multiplier (tried {candidates} "
        "with channels rounded to multiples of 8 and of 1)",
    )


def _check_strides(walker: _Walker, depthwise: list[TFLiteOperator], backbone: nn.Module, name: str) -> None:
    """The graph's depthwise convolutions (one per layer after the stem) stride and dilate as the
    built ``backbone``'s do."""
    for index, op in enumerate(depthwise, start=1):
        conv = backbone.features[index].depthwise[0]
        graph = (op.options["stride"][0], op.options["dilation"][0])
        if graph != (conv.stride[0], conv.dilation[0]):
            raise walker.error(
                op,
                op.outputs[0],
                f"stride {graph[0]} / dilation {graph[1]} where {name} at this output stride has "
                f"{conv.stride[0]} / {conv.dilation[0]}",
            )


def _output_stride(depthwise: list[TFLiteOperator]) -> int:
    """The stem's 2 times the strides of the depthwise convolutions."""
    stride = 2
    for op in depthwise:
        stride *= op.options["stride"][0]
    return stride


def _load_backbone(walker: _Walker, stem: TFLiteOperator, blocks: list[_Block], backbone: nn.Module) -> None:
    _load_conv_bn(walker, stem, backbone.features[0][0], backbone.features[0][1])
    for index, block in enumerate(blocks, start=1):
        layer = backbone.features[index]
        if (block.expand is None) != (layer.expand is None):
            raise walker.error(
                block.depthwise,
                block.depthwise.inputs[0],
                "expansion layer where the network has none, or none where it has one",
            )
        if block.expand is not None:
            _load_conv_bn(walker, block.expand, layer.expand[0], layer.expand[1])
        _load_conv_bn(walker, block.depthwise, layer.depthwise[0], layer.depthwise[1])
        _load_conv_bn(walker, block.project, layer.project[0], layer.project[1])
        if (block.add is not None) != layer.use_residual:
            raise walker.error(
                block.project, block.project.outputs[0], "residual connection does not match MobileNetV2's"
            )


def _read_labels(path: str | os.PathLike) -> list[str]:
    """One name per line, up to the first empty line (label files may end with notes)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TFLiteImportError(f"label file {str(file)!r} does not exist")
    names = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            break
        names.append(line.strip())
    return names


def _classifier_head(walker: _Walker, tensor: int) -> TFLiteOperator:
    """Global average pool and logits after ``tensor``; returns the logits operator."""
    pool = walker.next(tensor, ("AVERAGE_POOL_2D", "MEAN"), "global average pooling")
    walker.global_pool(pool, tensor, "global pool")
    pooled = walker.flattened(pool.outputs[0])
    # TF-slim's ImageNet releases compute the logits with a 1x1 conv, its fine-tuned ones (the
    # iNaturalist files) and Keras with a fully connected layer: on the pooled 1x1 map both are the
    # same linear layer, this network's classifier.
    logits = walker.next(pooled, ("CONV_2D", "FULLY_CONNECTED"), "the logits (1x1 convolution or fully connected)")  # fmt: skip
    if logits.op == "CONV_2D":
        walker.conv(logits, "logits", kernel=1, activation="NONE", bias=True)
    else:
        walker.fully_connected(logits, pooled, "logits")
    walker.check_all_used()
    return logits


def _load_logits(walker: _Walker, logits: TFLiteOperator, linear: nn.Linear, drop_background: bool) -> None:
    if logits.op == "CONV_2D":
        weight = _weights(walker, logits).flatten(1)
    else:  # FULLY_CONNECTED: already output x input, as nn.Linear stores it
        weight = torch.from_numpy(np.ascontiguousarray(_constant(walker, logits, logits.inputs[1])))
    bias = _bias(walker, logits, weight.shape[0])
    if drop_background:
        weight, bias = weight[1:], bias[1:]
    _copy(walker, logits, linear.weight, weight, logits.inputs[1])
    _copy(walker, logits, linear.bias, bias, logits.inputs[2])


def _classifier_classes(walker: _Walker, logits: TFLiteOperator, keep_background: bool) -> tuple[int, bool]:
    """Classes of the converted model, and whether TF-slim's background logit is dropped: its
    ImageNet classifiers have 1001 outputs, 0 the background; without it, index i is torchvision's
    ImageNet class i (same order: the label files agree name by name)."""
    outputs = walker.shape(logits.inputs[1])[0]
    drop = outputs == IMAGENET_WITH_BACKGROUND and not keep_background
    return outputs - int(drop), drop


def _class_names(labels, num_classes: int, drop: bool) -> list[str] | None:
    if labels is None:
        return None
    names = _read_labels(labels)
    if drop and len(names) == num_classes + 1:
        names = names[1:]
    if len(names) != num_classes:
        raise TFLiteImportError(
            f"label file {str(labels)!r} has {len(names)} names; the model has {num_classes} classes"
            + (f" ({num_classes + 1} with the background)" if drop else "")
        )
    return names


def _classifier(walker, stem, blocks, tensor, keep_background: bool, labels, normalization):
    from vision_mnv2.models import mobilenet_v2  # noqa: PLC0415

    last = walker.next(tensor, ("CONV_2D",), "the last 1x1 convolution")
    walker.conv(last, "last conv", kernel=1, activation="RELU6")
    logits = _classifier_head(walker, last.outputs[0])
    width, round_nearest = _infer_width(walker, stem, blocks, last)
    num_classes, drop = _classifier_classes(walker, logits, keep_background)
    args = {
        "width_mult": width,
        "num_classes": num_classes,
        "output_stride": _output_stride([block.depthwise for block in blocks]),
        "round_nearest": round_nearest,
        "tf_padding": True,
        "normalization": normalization,
    }
    model = mobilenet_v2(**args)
    _check_strides(walker, [block.depthwise for block in blocks], model.backbone, "MobileNetV2")
    _load_backbone(walker, stem, blocks, model.backbone)
    _load_conv_bn(walker, last, model.backbone.features[-1][0], model.backbone.features[-1][1])
    _load_logits(walker, logits, model.classifier[1], drop)
    names = _class_names(labels, num_classes, drop)
    return model, {"task": "classification", "builder": "mobilenet_v2", "builder_args": args, "class_names": names}


def _infer_v1_width(walker: _Walker, stem: TFLiteOperator, layers) -> tuple[float, int]:
    """TF-slim's depth multiplier and ``min_depth`` that give every layer width of a MobileNetV1 graph."""
    from vision_mnv2.models.mobilenetv1 import SEPARABLE_SETTINGS, STEM_CHANNELS, tf_slim_depth  # noqa: PLC0415

    observed = [walker.shape(stem.inputs[1])[0]] + [walker.shape(pointwise.inputs[1])[0] for _, pointwise in layers]
    estimate = observed[-1] / SEPARABLE_SETTINGS[-1][1]
    candidates = sorted({round(estimate, 4), *_KNOWN_V1_WIDTHS}, key=lambda w: abs(w - estimate))
    for min_depth in (8, 16):  # TF-slim's classifier; the Object Detection API's feature extractor
        for width in candidates:
            built = [tf_slim_depth(c, width, min_depth) for c in (STEM_CHANNELS, *(c for _, c in SEPARABLE_SETTINGS))]
            if built == observed:
                return width, min_depth
    raise walker.error(
        layers[-1][1],
        layers[-1][1].outputs[0],
        f"layer widths {observed} match no MobileNetV1 depth multiplier (tried {candidates})",
    )


def _classifier_v1(walker, stem, layers, tensor, keep_background: bool, labels, normalization):
    from vision_mnv2.models import mobilenet_v1  # noqa: PLC0415

    logits = _classifier_head(walker, tensor)
    width, min_depth = _infer_v1_width(walker, stem, layers)
    num_classes, drop = _classifier_classes(walker, logits, keep_background)
    args = {
        "width_mult": width,
        "num_classes": num_classes,
        "output_stride": _output_stride([depthwise for depthwise, _ in layers]),
        "min_depth": min_depth,
        "tf_padding": True,
        "normalization": normalization,
    }
    model = mobilenet_v1(**args)
    backbone = model.backbone
    _check_strides(walker, [depthwise for depthwise, _ in layers], backbone, "MobileNetV1")
    _load_conv_bn(walker, stem, backbone.features[0][0], backbone.features[0][1])
    for index, (depthwise, pointwise) in enumerate(layers, start=1):
        layer = backbone.features[index]
        _load_conv_bn(walker, depthwise, layer.depthwise[0], layer.depthwise[1])
        _load_conv_bn(walker, pointwise, layer.pointwise[0], layer.pointwise[1])
    _load_logits(walker, logits, model.classifier[1], drop)
    names = _class_names(labels, num_classes, drop)
    return model, {"task": "classification", "builder": "mobilenet_v1", "builder_args": args, "class_names": names}


def _deeplab(walker, stem, blocks, tensor, labels, normalization):
    from vision_mnv2.models import deeplabv3_mobilenet_v2  # noqa: PLC0415

    ops = [op for op in walker.consumers(tensor) if op.op != "ADD"]
    pools = [op for op in ops if op.op in ("AVERAGE_POOL_2D", "MEAN")]
    convs = [op for op in ops if op.op == "CONV_2D"]
    if len(pools) != 1 or len(convs) != 1 or len(ops) != 2:
        found = ", ".join(f"{op.op} (operator {op.index})" for op in ops) or "nothing"
        raise walker.error(
            None, tensor, f"after the last bottleneck: expected the classifier's 1x1 conv or DeepLab's mobile head "
            f"(image pooling + 1x1 conv), found {found}"
        )  # fmt: skip
    pool, aspp0 = pools[0], convs[0]
    walker.global_pool(pool, tensor, "image pooling")
    walker.conv(aspp0, "aspp0", kernel=1, activation="RELU")
    image_pooling = walker.next(pool.outputs[0], ("CONV_2D",), "the image pooling 1x1 convolution")
    walker.conv(image_pooling, "image pooling", kernel=1, activation="RELU")
    broadcast = walker.next(image_pooling.outputs[0], ("RESIZE_BILINEAR",), "the image pooling resize")
    walker.visited.add(broadcast.index)  # 1x1 -> feature size: a broadcast whatever the corners
    concat = walker.next(aspp0.outputs[0], ("CONCATENATION",), "the concatenation of the head's branches")
    branches = [walker.source(t) for t in concat.inputs]
    if sorted(branches) != sorted([walker.source(broadcast.outputs[0]), walker.source(aspp0.outputs[0])]):
        raise walker.error(
            concat,
            concat.outputs[0],
            f"expected image pooling and aspp0 concatenated, found {len(branches)} inputs (ASPP with atrous branches is not supported)",
        )
    if concat.options.get("axis") not in (3, -1) or concat.options.get("activation") != "NONE":
        raise walker.error(concat, concat.outputs[0], f"expected a channel concatenation, found {concat.options}")
    walker.visited.add(concat.index)
    projection = walker.next(concat.outputs[0], ("CONV_2D",), "concat_projection")
    walker.conv(projection, "concat_projection", kernel=1, activation="RELU")
    logits = walker.next(projection.outputs[0], ("CONV_2D",), "the logits (1x1 convolution)")
    walker.conv(logits, "logits", kernel=1, activation="NONE", bias=True)

    # The logits go through one or more bilinear resizes to the input size (DeepLab resizes to the
    # feature size first, a no-op, then to the image).
    image_size = walker.shape(walker.g.inputs[0])[1:3]
    out, align_corners = logits.outputs[0], None
    while True:
        following = [op for op in walker.consumers(out) if op.op == "RESIZE_BILINEAR"]
        if not following:
            break
        resize = following[0]
        walker.visited.add(resize.index)
        if walker.shape(resize.outputs[0])[1:3] != walker.shape(out)[1:3]:
            if walker.shape(resize.outputs[0])[1:3] != image_size:
                raise walker.error(
                    resize, resize.outputs[0], "the logits are resized to something other than the input size"
                )
            if resize.options.get("align_corners"):
                align_corners = True
            elif resize.options.get("half_pixel_centers"):
                align_corners = False
            else:
                raise walker.error(
                    resize, resize.outputs[0], "bilinear resize with neither align_corners nor half_pixel_centers "
                    "(TF1's legacy sampling) has no PyTorch equivalent"
                )  # fmt: skip
        out = resize.outputs[0]
    if align_corners is None:
        raise walker.error(logits, logits.outputs[0], "the logits are never resized to the input size")
    walker.check_all_used()

    width, round_nearest = _infer_width(walker, stem, blocks, None)
    output_stride = _output_stride([block.depthwise for block in blocks])
    if output_stride not in (8, 16):
        raise walker.error(blocks[-1].depthwise, tensor, f"DeepLab output stride {output_stride}; expected 8 or 16")
    args = {
        "num_classes": walker.shape(logits.inputs[1])[0],
        "width_mult": width,
        "output_stride": output_stride,
        "aspp": False,
        "round_nearest": round_nearest,
        "tf_padding": True,
        "align_corners": align_corners,
        "normalization": normalization,
    }
    model = deeplabv3_mobilenet_v2(**args)
    _check_strides(walker, [block.depthwise for block in blocks], model.backbone, "MobileNetV2")
    _load_backbone(walker, stem, blocks, model.backbone)
    conv0, pooling = model.aspp.convs[0], model.aspp.convs[1]
    _load_conv_bn(walker, aspp0, conv0[0], conv0[1])
    _load_conv_bn(walker, image_pooling, pooling[1], pooling[2])
    # torchvision's ASPP concatenates [1x1 conv, pooling]; TF the order of the concat's inputs.
    weight = _weights(walker, projection)
    sizes = [walker.shape(t)[3] for t in concat.inputs]
    parts = dict(zip(branches, weight.split(sizes, dim=1)))
    weight = torch.cat([parts[walker.source(aspp0.outputs[0])], parts[walker.source(broadcast.outputs[0])]], dim=1)
    _load_conv_bn(walker, projection, model.aspp.project[0], model.aspp.project[1], weight)
    _copy(walker, logits, model.classifier.weight, _weights(walker, logits), logits.inputs[1])
    _copy(walker, logits, model.classifier.bias, _bias(walker, logits, args["num_classes"]), logits.inputs[2])

    names = None
    if labels is not None:
        names = _read_labels(labels)
        if len(names) != args["num_classes"]:
            raise TFLiteImportError(
                f"label file {str(labels)!r} has {len(names)} names; the model has {args['num_classes']} classes"
            )
    info = {"task": "segmentation", "builder": "deeplabv3_mobilenet_v2", "builder_args": args, "class_names": names}
    return model, info


def _refuse_edgetpu(graph: TFLiteGraph) -> None:
    """Google publishes each Coral model twice: for the CPU and compiled for the Edge TPU, where the
    network's layers are one opaque custom operator (no weights to read). Which file to take instead
    is the useful answer, not where the walk would stop."""
    if any(op.op == _EDGETPU_OPERATOR for op in graph.operators):
        path = Path(graph.path)
        cpu = path.with_name(path.name.replace("_edgetpu", "")) if "_edgetpu" in path.name else None
        instead = f" ({cpu.name})" if cpu is not None else ""
        raise TFLiteUnsupportedGraph(
            f"{graph.path}: compiled for the Edge TPU (custom operator {_EDGETPU_OPERATOR.split(':')[1]!r}); "
            f"use the CPU file of the same name without _edgetpu{instead}"
        )


def tf_model_input(pixels: torch.Tensor) -> torch.Tensor:
    """What TF's float graphs take: RGB pixels 0..255 as ``(x - 128) / 128``. (This project's networks
    take ``pixels / 255`` and apply that normalisation themselves: their ``normalization="tf"``.)"""
    return (pixels.float() - 128.0) / 128.0


def load_tflite(
    path: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    keep_background: bool = False,
    calibrate: bool = True,
    calibration: str | os.PathLike | None = None,
    num_calibration_images: int = 32,
    seed: int = 0,
) -> tuple[nn.Module, dict]:
    """Read one of Google's MobileNet TFLite files into this project's network, weights loaded.

    Args:
        path: a ``.tflite`` file of one of :data:`SUPPORTED_FAMILIES`: a MobileNetV2 classifier
            (TF-slim or TF2 / Keras), a TF-slim MobileNetV1 classifier or DeepLab v3 MobileNetV2
            (mobile head), quantised or float. Any other graph raises :class:`TFLiteUnsupportedGraph`.
        labels: optional label file, one name per line (up to the first empty line).
        keep_background: classifiers with 1001 outputs: keep TF's background logit at index 0.
            By default it is dropped, so that index i is torchvision's ImageNet class i.
        calibrate: give the batch norms statistics measured on calibration images (output
            unchanged, see :func:`calibrate_batch_norm`) so that the network fine-tunes; ``False``
            leaves them the identity (the folded network as is: fine for inference only).
        calibration: folder of calibration images (e.g. the fine-tuning set); ``None``: generated
            scenes, the best that needs no data.
        num_calibration_images: how many images, at the graph's input size.

    Returns:
        The network in eval mode, and a plain dict: ``task``, ``builder``, ``builder_args`` (every
        keyword argument that builder needs to rebuild the same network), ``class_names`` (from
        ``labels``, else ``None``), ``normalization`` (read from the input's quantisation: ``"tf"``
        for ``(pixel - 128) / 128``, else ``{mean, std}``; the network applies it to its
        ``pixel / 255`` input), ``input_scaling`` (that scaling in words, with the input range) and
        ``input_size`` ([H, W] the graph was made for).
    """
    graph = read_tflite(path)
    _refuse_edgetpu(graph)
    walker = _Walker(graph)
    stem = walker.stem()
    normalization, input_scaling = _input_normalization(walker)
    if walker.is_mobilenet_v1(stem):
        layers, tensor = walker.separable_layers(stem)
        model, info = _classifier_v1(walker, stem, layers, tensor, keep_background, labels, normalization)
    else:
        blocks, tensor = walker.backbone(stem)
        following = [op for op in walker.consumers(tensor) if op.op != "ADD"]
        if len(following) == 1 and following[0].op == "CONV_2D":
            model, info = _classifier(walker, stem, blocks, tensor, keep_background, labels, normalization)
        else:
            model, info = _deeplab(walker, stem, blocks, tensor, labels, normalization)
    input_size = list(walker.shape(graph.inputs[0])[1:3])
    info["normalization"] = normalization
    info["input_scaling"] = input_scaling
    info["input_size"] = input_size
    model.eval()
    if calibrate:
        pixels = calibration_images(calibration, num_calibration_images, tuple(input_size), seed=seed)
        calibrate_batch_norm(model, pixels.float() / 255.0)  # the networks normalise inside
    return model, info
