"""Writing small TFLite files for the import tests, with the ``tflite`` package's flatbuffer builders.

Google publishes its MobileNetV2 models quantised; the float path of the importer is tested on float
copies of those graphs written here: every quantised constant dequantised to float32, activations
float32, activation re-quantisations dropped. The TFLite interpreter runs the copies, so they are
checked to be real, valid models, and their outputs are the exact float reference (no quantisation
noise) for the imported networks. :func:`halve_channels` makes the narrow DeepLab Google trained
(width 0.5, channels rounded to 1) out of the full one, a graph the importer has not otherwise seen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vision_mnv2.convert import dequantize
from vision_mnv2.convert.tflite import TFLiteGraph

_TYPES = {
    np.dtype(np.float32): 0,
    np.dtype(np.float16): 1,
    np.dtype(np.int32): 2,
    np.dtype(np.uint8): 3,
    np.dtype(np.int64): 4,
    np.dtype(np.int8): 9,
}


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    axis: int = 0


@dataclass
class Operator:
    op: str
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]


def _module(name: str):
    # ``tflite/__init__`` star-imports every generated module, so ``tflite.Model`` is the class and the
    # module (with the builder functions) has to be looked up by name.
    return importlib.import_module(f"tflite.{name}")


def _bytes_vector(builder, data: bytes) -> int:
    # Constants 16-byte aligned, as TFLite's own converter writes them.
    builder.StartVector(1, len(data), 16)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _int_vector(builder, start, values) -> int:
    start(builder, len(values))
    for v in reversed(values):
        builder.PrependInt32(int(v))
    return builder.EndVector()


_ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU6": 3}
_PADDING = {"SAME": 0, "VALID": 1}


def _options(builder, op: Operator, tensors: list[Tensor]) -> tuple[int, int]:
    """(BuiltinOptions type, table offset) of one operator."""
    import tflite  # noqa: PLC0415

    Add = _module("AddOptions")
    Mul = _module("MulOptions")
    ArgMax = _module("ArgMaxOptions")
    Concat = _module("ConcatenationOptions")
    Conv = _module("Conv2DOptions")
    Depthwise = _module("DepthwiseConv2DOptions")
    FullyConnected = _module("FullyConnectedOptions")
    Pool = _module("Pool2DOptions")
    Reducer = _module("ReducerOptions")
    Resize = _module("ResizeBilinearOptions")
    Softmax = _module("SoftmaxOptions")

    kinds, o = tflite.BuiltinOptions, op.options
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        m = Conv if op.op == "CONV_2D" else Depthwise
        prefix = "Conv2DOptions" if op.op == "CONV_2D" else "DepthwiseConv2DOptions"
        getattr(m, prefix + "Start")(builder)
        getattr(m, prefix + "AddPadding")(builder, _PADDING[o["padding"]])
        getattr(m, prefix + "AddStrideH")(builder, o["stride"][0])
        getattr(m, prefix + "AddStrideW")(builder, o["stride"][1])
        getattr(m, prefix + "AddDilationHFactor")(builder, o["dilation"][0])
        getattr(m, prefix + "AddDilationWFactor")(builder, o["dilation"][1])
        getattr(m, prefix + "AddFusedActivationFunction")(builder, _ACTIVATIONS[o["activation"]])
        if op.op == "DEPTHWISE_CONV_2D":
            Depthwise.DepthwiseConv2DOptionsAddDepthMultiplier(builder, 1)
        return getattr(kinds, prefix), getattr(m, prefix + "End")(builder)
    if op.op == "AVERAGE_POOL_2D":
        Pool.Pool2DOptionsStart(builder)
        Pool.Pool2DOptionsAddPadding(builder, _PADDING[o["padding"]])
        Pool.Pool2DOptionsAddStrideH(builder, o["stride"][0])
        Pool.Pool2DOptionsAddStrideW(builder, o["stride"][1])
        Pool.Pool2DOptionsAddFilterHeight(builder, o["filter"][0])
        Pool.Pool2DOptionsAddFilterWidth(builder, o["filter"][1])
        Pool.Pool2DOptionsAddFusedActivationFunction(builder, _ACTIVATIONS[o["activation"]])
        return kinds.Pool2DOptions, Pool.Pool2DOptionsEnd(builder)
    if op.op == "MEAN":
        Reducer.ReducerOptionsStart(builder)
        Reducer.ReducerOptionsAddKeepDims(builder, bool(o.get("keep_dims", False)))
        return kinds.ReducerOptions, Reducer.ReducerOptionsEnd(builder)
    if op.op == "FULLY_CONNECTED":
        FullyConnected.FullyConnectedOptionsStart(builder)
        FullyConnected.FullyConnectedOptionsAddFusedActivationFunction(builder, _ACTIVATIONS[o["activation"]])
        FullyConnected.FullyConnectedOptionsAddWeightsFormat(builder, o.get("weights_format", 0))
        return kinds.FullyConnectedOptions, FullyConnected.FullyConnectedOptionsEnd(builder)
    if op.op == "ADD":
        Add.AddOptionsStart(builder)
        Add.AddOptionsAddFusedActivationFunction(builder, _ACTIVATIONS[o.get("activation", "NONE")])
        return kinds.AddOptions, Add.AddOptionsEnd(builder)
    if op.op == "MUL":
        Mul.MulOptionsStart(builder)
        Mul.MulOptionsAddFusedActivationFunction(builder, _ACTIVATIONS[o.get("activation", "NONE")])
        return kinds.MulOptions, Mul.MulOptionsEnd(builder)
    if op.op == "CONCATENATION":
        Concat.ConcatenationOptionsStart(builder)
        Concat.ConcatenationOptionsAddAxis(builder, o["axis"])
        Concat.ConcatenationOptionsAddFusedActivationFunction(builder, _ACTIVATIONS[o["activation"]])
        return kinds.ConcatenationOptions, Concat.ConcatenationOptionsEnd(builder)
    if op.op == "RESIZE_BILINEAR":
        Resize.ResizeBilinearOptionsStart(builder)
        Resize.ResizeBilinearOptionsAddAlignCorners(builder, o["align_corners"])
        Resize.ResizeBilinearOptionsAddHalfPixelCenters(builder, o["half_pixel_centers"])
        return kinds.ResizeBilinearOptions, Resize.ResizeBilinearOptionsEnd(builder)
    if op.op == "SOFTMAX":
        Softmax.SoftmaxOptionsStart(builder)
        Softmax.SoftmaxOptionsAddBeta(builder, 1.0)
        return kinds.SoftmaxOptions, Softmax.SoftmaxOptionsEnd(builder)
    if op.op == "ARG_MAX":
        ArgMax.ArgMaxOptionsStart(builder)
        ArgMax.ArgMaxOptionsAddOutputType(builder, _TYPES[tensors[op.outputs[0]].dtype])
        return kinds.ArgMaxOptions, ArgMax.ArgMaxOptionsEnd(builder)
    return 0, 0  # RESHAPE (the shape comes as an input tensor), DEQUANTIZE, ...: no options


def write_tflite(graph: Graph, path: str | Path) -> Path:
    """Serialise ``graph`` as a TFLite flatbuffer (one subgraph) at ``path``."""
    import flatbuffers  # noqa: PLC0415

    B = _module("Buffer")
    M = _module("Model")
    Op = _module("Operator")
    OC = _module("OperatorCode")
    Q = _module("QuantizationParameters")
    S = _module("SubGraph")
    T = _module("Tensor")
    from tflite.BuiltinOperator import BuiltinOperator  # noqa: PLC0415

    builder = flatbuffers.Builder(1 << 20)
    # Buffer 0 is the empty buffer every activation points at.
    buffers = [None] + [t.data for t in graph.tensors if t.data is not None]
    buffer_offsets = []
    for data in buffers:
        vector = _bytes_vector(builder, np.ascontiguousarray(data).tobytes()) if data is not None else None
        B.BufferStart(builder)
        if vector is not None:
            B.BufferAddData(builder, vector)
        buffer_offsets.append(B.BufferEnd(builder))

    tensor_offsets = []
    next_buffer = 1
    for t in graph.tensors:
        name = builder.CreateString(t.name)
        shape = _int_vector(builder, T.TensorStartShapeVector, t.shape)
        quant = None
        if t.scale is not None:
            scale = builder.CreateNumpyVector(np.asarray(t.scale, dtype=np.float32).reshape(-1))
            zero = builder.CreateNumpyVector(np.asarray(t.zero_point, dtype=np.int64).reshape(-1))
            Q.QuantizationParametersStart(builder)
            Q.QuantizationParametersAddScale(builder, scale)
            Q.QuantizationParametersAddZeroPoint(builder, zero)
            Q.QuantizationParametersAddQuantizedDimension(builder, t.axis)
            quant = Q.QuantizationParametersEnd(builder)
        T.TensorStart(builder)
        T.TensorAddShape(builder, shape)
        T.TensorAddType(builder, _TYPES[np.dtype(t.dtype)])
        T.TensorAddName(builder, name)
        if t.data is not None:
            T.TensorAddBuffer(builder, next_buffer)
            next_buffer += 1
        if quant is not None:
            T.TensorAddQuantization(builder, quant)
        tensor_offsets.append(T.TensorEnd(builder))

    codes = sorted({op.op for op in graph.operators})
    code_offsets = []
    for code in codes:
        # "CUSTOM:<name>", as the reader names custom operators (the Edge TPU's edgetpu-custom-op)
        builtin, _, custom = code.partition(":")
        value = getattr(BuiltinOperator, builtin)
        custom_name = builder.CreateString(custom) if custom else None
        OC.OperatorCodeStart(builder)
        OC.OperatorCodeAddDeprecatedBuiltinCode(builder, min(value, 127))
        OC.OperatorCodeAddBuiltinCode(builder, value)
        if custom_name is not None:
            OC.OperatorCodeAddCustomCode(builder, custom_name)
        OC.OperatorCodeAddVersion(builder, 1)
        code_offsets.append(OC.OperatorCodeEnd(builder))

    op_offsets = []
    for op in graph.operators:
        inputs = _int_vector(builder, Op.OperatorStartInputsVector, op.inputs)
        outputs = _int_vector(builder, Op.OperatorStartOutputsVector, op.outputs)
        options_type, options = _options(builder, op, graph.tensors)
        Op.OperatorStart(builder)
        Op.OperatorAddOpcodeIndex(builder, codes.index(op.op))
        Op.OperatorAddInputs(builder, inputs)
        Op.OperatorAddOutputs(builder, outputs)
        if options_type:
            Op.OperatorAddBuiltinOptionsType(builder, options_type)
            Op.OperatorAddBuiltinOptions(builder, options)
        op_offsets.append(Op.OperatorEnd(builder))

    def table_vector(start, offsets):
        start(builder, len(offsets))
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    tensors = table_vector(S.SubGraphStartTensorsVector, tensor_offsets)
    operators = table_vector(S.SubGraphStartOperatorsVector, op_offsets)
    inputs = _int_vector(builder, S.SubGraphStartInputsVector, graph.inputs)
    outputs = _int_vector(builder, S.SubGraphStartOutputsVector, graph.outputs)
    name = builder.CreateString("main")
    S.SubGraphStart(builder)
    S.SubGraphAddTensors(builder, tensors)
    S.SubGraphAddOperators(builder, operators)
    S.SubGraphAddInputs(builder, inputs)
    S.SubGraphAddOutputs(builder, outputs)
    S.SubGraphAddName(builder, name)
    subgraph = S.SubGraphEnd(builder)

    subgraphs = table_vector(M.ModelStartSubgraphsVector, [subgraph])
    opcodes = table_vector(M.ModelStartOperatorCodesVector, code_offsets)
    buffer_vector = table_vector(M.ModelStartBuffersVector, buffer_offsets)
    description = builder.CreateString("vision-mnv2 test copy")
    M.ModelStart(builder)
    M.ModelAddVersion(builder, 3)
    M.ModelAddOperatorCodes(builder, opcodes)
    M.ModelAddSubgraphs(builder, subgraphs)
    M.ModelAddDescription(builder, description)
    M.ModelAddBuffers(builder, buffer_vector)
    builder.Finish(M.ModelEnd(builder), file_identifier=b"TFL3")
    path = Path(path)
    path.write_bytes(builder.Output())
    return path


def float_copy(graph: TFLiteGraph, extra_outputs: tuple[str, ...] = ()) -> Graph:
    """``graph`` with float32 constants and activations; ``extra_outputs``: names of activations to
    make graph outputs too (e.g. the logits, to compare before softmax / argmax)."""
    tensors = []
    for t in graph.tensors:
        quantised = t.scale is not None
        if t.data is not None:
            data = dequantize(t.data, t.scale, t.zero_point, t.quantized_dimension) if quantised else t.data
            tensors.append(Tensor(t.name, t.shape, data.dtype, data))
        else:
            dtype = np.dtype(np.float32) if quantised or t.type_name == "float32" else np.dtype(t.type_name)
            tensors.append(Tensor(t.name, t.shape, dtype))
    # An activation re-quantisation has nothing to do in float: its readers read its input.
    alias = {}
    operators = []
    for op in graph.operators:
        inputs = [alias.get(i, i) for i in op.inputs]
        if op.op == "QUANTIZE":
            alias[op.outputs[0]] = inputs[0]
            continue
        operators.append(Operator(op.op, inputs, list(op.outputs), dict(op.options)))
    outputs = [alias.get(i, i) for i in graph.outputs]
    outputs += [next(i for i, t in enumerate(tensors) if t.name.endswith(name)) for name in extra_outputs]
    return Graph(tensors, operators, list(graph.inputs), outputs)


def halve_channels(graph: Graph, keep: tuple[int, ...] = (3, 256, 21)) -> Graph:
    """DeepLab's MobileNetV2 at width 0.5 as DeepLab builds it (channels rounded to 1, so every
    backbone width is exactly half: 24 -> 12, expansion 144 -> 72), by keeping the first half of
    every backbone channel; the image's 3 channels and the head's 256 / class channels stay."""
    tensors = list(graph.tensors)
    channels: dict[int, int] = {graph.inputs[0]: 3}
    for op in graph.operators:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight = tensors[op.inputs[1]]
            c_in = channels[op.inputs[0]]
            if op.op == "CONV_2D":
                c_out = weight.shape[0] if weight.shape[0] in keep else weight.shape[0] // 2
                data = weight.data[:c_out, :, :, :c_in]
            else:
                c_out = c_in
                data = weight.data[..., :c_out]
            tensors[op.inputs[1]] = replace(weight, shape=data.shape, data=np.ascontiguousarray(data))
            bias = tensors[op.inputs[2]]
            tensors[op.inputs[2]] = replace(bias, shape=(c_out,), data=np.ascontiguousarray(bias.data[:c_out]))
        elif op.op == "CONCATENATION":
            c_out = sum(channels[i] for i in op.inputs)
        elif op.op in ("ADD", "AVERAGE_POOL_2D", "RESIZE_BILINEAR"):
            c_out = channels[op.inputs[0]]
        else:
            continue
        out = tensors[op.outputs[0]]
        tensors[op.outputs[0]] = replace(out, shape=(*out.shape[:-1], c_out))
        channels[op.outputs[0]] = c_out
    return replace(graph, tensors=tensors)


def _propagate_shapes(graph: Graph, input_shape: tuple[int, ...]) -> Graph:
    """Every activation's shape recomputed from the input's, as the interpreter does; global pools
    keep pooling the whole map and DeepLab's resizes to the feature size follow it."""
    operators = [replace(op, options=dict(op.options)) for op in graph.operators]
    tensors = list(graph.tensors)
    tensors[graph.inputs[0]] = replace(tensors[graph.inputs[0]], shape=tuple(input_shape))
    old_size = next(op for op in operators if op.op == "AVERAGE_POOL_2D").options["filter"]
    feature_size = None
    for op in operators:
        first = tensors[op.inputs[0]].shape
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            stride = op.options["stride"][0]
            channels = tensors[op.inputs[1]].shape[0 if op.op == "CONV_2D" else 3]
            shape = (1, -(-first[1] // stride), -(-first[2] // stride), channels)
        elif op.op == "AVERAGE_POOL_2D":
            op.options["filter"] = feature_size = first[1:3]
            shape = (1, 1, 1, first[3])
        elif op.op == "RESIZE_BILINEAR":
            size = tensors[op.inputs[1]]
            if tuple(size.data) == old_size:  # DeepLab's resizes to the feature size
                tensors[op.inputs[1]] = replace(size, data=np.array(feature_size, dtype=np.int32))
            elif tuple(size.data) == tuple(graph.tensors[graph.inputs[0]].shape[1:3]):  # to the image
                tensors[op.inputs[1]] = replace(size, data=np.array(input_shape[1:3], dtype=np.int32))
            shape = (1, *(int(v) for v in tensors[op.inputs[1]].data), first[3])
        elif op.op == "CONCATENATION":
            shape = (*first[:3], sum(tensors[i].shape[3] for i in op.inputs))
        elif op.op == "ARG_MAX":
            shape = first[:3]
        elif op.op == "RESHAPE":
            shape = tuple(int(v) for v in tensors[op.inputs[1]].data)
        else:
            shape = first
        tensors[op.outputs[0]] = replace(tensors[op.outputs[0]], shape=tuple(shape))
    return replace(graph, operators=operators, tensors=tensors)


def output_stride_8(graph: Graph) -> Graph:
    """DeepLab at output stride 8, as TF builds it from the same weights: the stride-2 depthwise conv
    of bottleneck 7 becomes stride 1 and later depthwise convs dilate (2, then 4 after bottleneck 14's
    stride)."""
    operators = [replace(op, options=dict(op.options)) for op in graph.operators]
    depthwise = [op for op in operators if op.op == "DEPTHWISE_CONV_2D"]
    for number, op in enumerate(depthwise, start=1):
        if number in (7, 14):
            op.options["stride"] = (1, 1)
        op.options["dilation"] = (1, 1) if number <= 7 else (2, 2) if number <= 14 else (4, 4)
    return _propagate_shapes(replace(graph, operators=operators), graph.tensors[graph.inputs[0]].shape)


def _make_divisible(value: float, divisor: int = 8) -> int:
    # TF-slim's rounding (mobilenet.py _make_divisible), restated so that the test does not take
    # the rule it checks from the code under test.
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def narrow_classifier(graph: Graph, width: float, size: int) -> Graph:
    """The TF-slim classifier at another width (channels rounded to 8, the last conv kept at 1280
    below width 1, expansions 6x the block's input) and input size, by keeping the first channels of
    every layer: the networks Google released at widths 0.35-1.4 and sizes 96-224, with weights
    that are not trained but a valid graph for the interpreter."""
    tensors = list(graph.tensors)
    channels: dict[int, int] = {graph.inputs[0]: 3}
    readers: dict[int, list[Operator]] = {}
    for op in graph.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    for op in graph.operators:
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight = tensors[op.inputs[1]]
            c_in = channels[op.inputs[0]]
            if op.op == "DEPTHWISE_CONV_2D":
                c_out = c_in
                data = weight.data[..., :c_out]
            else:
                full_out, full_in = weight.shape[0], weight.shape[3]
                feeds_depthwise = any(o.op == "DEPTHWISE_CONV_2D" for o in readers.get(op.outputs[0], []))
                if full_out == 1001:  # the logits
                    c_out = full_out
                elif feeds_depthwise and full_in != 3:  # an expansion (the stem reads the image)
                    c_out = _make_divisible(c_in * full_out // full_in)
                elif full_out == 1280:  # the last conv
                    c_out = _make_divisible(1280 * max(1.0, width))
                else:  # the stem and the projections
                    c_out = _make_divisible(full_out * width)
                data = weight.data[:c_out, :, :, :c_in]
            tensors[op.inputs[1]] = replace(weight, shape=data.shape, data=np.ascontiguousarray(data))
            bias = tensors[op.inputs[2]]
            tensors[op.inputs[2]] = replace(bias, shape=(c_out,), data=np.ascontiguousarray(bias.data[:c_out]))
        elif op.op in ("ADD", "AVERAGE_POOL_2D"):
            c_out = channels[op.inputs[0]]
        else:
            continue
        out = tensors[op.outputs[0]]
        tensors[op.outputs[0]] = replace(out, shape=(*out.shape[:-1], c_out))
        channels[op.outputs[0]] = c_out
    return _propagate_shapes(replace(graph, tensors=tensors), (1, size, size, 3))


def float16_weights(graph: Graph) -> Graph:
    """Weights and biases stored as float16, each read through a DEQUANTIZE op, as TF's float16
    post-training quantisation writes a model."""
    tensors = list(graph.tensors)
    dequantize_ops = []
    for op in graph.operators:
        if op.op not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        for index in op.inputs[1:3]:
            constant = tensors[index]
            tensors.append(replace(constant, name=constant.name + "/fp16", dtype=np.dtype(np.float16), data=constant.data.astype(np.float16)))  # fmt: skip
            tensors[index] = replace(constant, data=None)
            dequantize_ops.append(Operator("DEQUANTIZE", [len(tensors) - 1], [index]))
    return replace(graph, tensors=tensors, operators=dequantize_ops + list(graph.operators))
