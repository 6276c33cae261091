"""Google's released MobileNetV2 models (TFLite) imported into this project's networks, checked
against the TFLite interpreter: the quantised files themselves, and float copies of them written
here (exact references, without quantisation noise) including the narrow DeepLab (width 0.5)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vision_mnv2
from vision_mnv2.convert import TFLiteImportError, TFLiteUnsupportedGraph, dequantize, load_tflite, read_tflite
from vision_mnv2.convert.tflite import tf_model_input
from vision_mnv2.models import deeplabv3_mobilenet_v2, mobilenet_v2

from .helpers import GOOGLE_CLASSIFIER as CLASSIFIER
from .helpers import GOOGLE_DEEPLAB as DEEPLAB
from .helpers import GOOGLE_MODELS as GOOGLE
from .helpers import needs_google

tflite = pytest.importorskip("tflite")

from .tflite_writer import (  # noqa: E402
    Graph,
    Operator,
    Tensor,
    float16_weights,
    float_copy,
    halve_channels,
    narrow_classifier,
    output_stride_8,
    write_tflite,
)


def _interpreter():
    return pytest.importorskip("ai_edge_litert.interpreter").Interpreter


def _run_interpreter(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs by name, dequantised where quantised; ``image`` is H x W x 3."""
    interpreter = _interpreter()(model_path=str(path))
    interpreter.allocate_tensors()
    (entry,) = interpreter.get_input_details()
    interpreter.set_tensor(entry["index"], image[None].astype(entry["dtype"]))
    interpreter.invoke()
    outputs = {}
    for detail in interpreter.get_output_details():
        value = interpreter.get_tensor(detail["index"])[0]
        scale, zero_point = detail["quantization"]
        outputs[detail["name"]] = (value.astype(np.float32) - zero_point) * scale if scale else value
    return outputs


def _photo(name: str, size: int | None = None) -> np.ndarray:
    image = Image.open(GOOGLE / name).convert("RGB")
    if size is not None:
        image = image.resize((size, size), Image.BILINEAR)
    return np.array(image)


def _ours(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The network's output for an H x W x 3 uint8 image, channels last like TFLite's."""
    with torch.no_grad():
        out = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0]  # it normalises itself
    return (out.permute(1, 2, 0) if out.ndim == 3 else out).numpy()


# --------------------------------------------------------------------------------------------------
# Reading tensors


def test_dequantize_per_tensor_per_channel_and_float():
    q = np.array([[0, 128, 255]], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(q, np.array([0.5]), np.array([128])), [[-64.0, 0.0, 63.5]])
    # Per output channel: CONV_2D weights along axis 0, DEPTHWISE_CONV_2D along axis 3.
    w = np.arange(-4, 4, dtype=np.int8).reshape(2, 1, 1, 4)
    scales = np.array([0.1, 0.01])
    expected = w.astype(np.float64) * scales.reshape(2, 1, 1, 1)
    np.testing.assert_allclose(dequantize(w, scales, np.zeros(2), axis=0), expected, rtol=1e-6)
    dw = np.arange(-4, 4, dtype=np.int8).reshape(1, 2, 1, 4)
    scales = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(dequantize(dw, scales, np.array([0]), axis=3), dw * scales.reshape(1, 1, 1, 4))
    half = np.array([1.5, -2.25], dtype=np.float16)
    assert dequantize(half).dtype == np.float32 and dequantize(half).tolist() == [1.5, -2.25]
    with pytest.raises(ValueError, match="3 per-channel scales for axis 0"):
        dequantize(w, np.ones(3), None, axis=0)
    with pytest.raises(ValueError, match="without a quantisation scale"):
        dequantize(q)


def test_read_tflite_constants_and_options(tmp_path):
    """A file written here: float32, per-tensor uint8 and per-channel int8 constants read back."""
    rng = np.random.default_rng(0)
    float_weights = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    per_channel = rng.integers(-127, 127, size=(1, 3, 3, 4), dtype=np.int8)
    per_tensor = rng.integers(0, 255, size=(2, 1, 1, 4), dtype=np.uint8)
    tensors = [
        Tensor("image", (1, 8, 8, 3), np.dtype(np.float32)),
        Tensor("conv/weights", float_weights.shape, float_weights.dtype, float_weights),
        Tensor("conv/bias", (4,), np.dtype(np.float32), np.arange(4, dtype=np.float32)),
        Tensor("conv/out", (1, 4, 4, 4), np.dtype(np.float32)),
        Tensor(
            "dw/weights",
            per_channel.shape,
            per_channel.dtype,
            per_channel,
            np.array([0.1, 0.2, 0.3, 0.4]),
            np.zeros(4),
            3,
        ),  # fmt: skip
        Tensor("dw/bias", (4,), np.dtype(np.float32), np.zeros(4, dtype=np.float32)),
        Tensor("dw/out", (1, 4, 4, 4), np.dtype(np.float32)),
        Tensor("pw/weights", per_tensor.shape, per_tensor.dtype, per_tensor, np.array([0.02]), np.array([100])),
    ]
    conv = {"padding": "SAME", "stride": (2, 2), "dilation": (1, 1), "activation": "RELU6"}
    operators = [
        Operator("CONV_2D", [0, 1, 2], [3], conv),
        Operator("DEPTHWISE_CONV_2D", [3, 4, 5], [6], {**conv, "stride": (1, 1), "dilation": (2, 2)}),
    ]
    path = write_tflite(Graph(tensors, operators, [0], [6]), tmp_path / "small.tflite")
    graph = read_tflite(path)
    assert [t.name for t in graph.tensors] == [t.name for t in tensors]
    np.testing.assert_array_equal(graph.tensors[1].data, float_weights)
    read = graph.tensors[4]
    assert read.type_name == "int8" and read.quantized_dimension == 3
    np.testing.assert_allclose(
        dequantize(read.data, read.scale, read.zero_point, read.quantized_dimension),
        per_channel * np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32),
        rtol=1e-6,
    )
    read = graph.tensors[7]
    np.testing.assert_allclose(
        dequantize(read.data, read.scale, read.zero_point), 0.02 * (per_tensor - 100.0), rtol=1e-6
    )
    assert [op.op for op in graph.operators] == ["CONV_2D", "DEPTHWISE_CONV_2D"]
    assert graph.operators[0].options == conv
    assert graph.operators[1].options["dilation"] == (2, 2) and graph.operators[1].options["depth_multiplier"] == 1
    # Not a MobileNetV2: an error naming where the walk stopped, and what the converter takes.
    with pytest.raises(TFLiteUnsupportedGraph, match=r"small\.tflite: not a supported graph: at tensor 'dw/out': expected the projection \(CONV_2D\).*\. Supported: MobileNetV2 classifier, TF-slim or TF2/Keras .*; TF-slim MobileNetV1 classifier .*; DeepLab v3 MobileNetV2"):  # fmt: skip
        load_tflite(path, calibrate=False)


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(TFLiteImportError, match="nowhere.tflite.*does not exist"):
        read_tflite(tmp_path / "nowhere.tflite")
    text = tmp_path / "model.tflite"
    text.write_text("not a flatbuffer")
    with pytest.raises(TFLiteImportError, match="model.tflite.*not a TFLite model"):
        read_tflite(text)
    if CLASSIFIER.is_file():
        truncated = tmp_path / "truncated.tflite"
        truncated.write_bytes(CLASSIFIER.read_bytes()[:100_000])
        with pytest.raises(TFLiteImportError, match="truncated.tflite"):
            read_tflite(truncated)


# --------------------------------------------------------------------------------------------------
# Google's quantised files against the interpreter


@needs_google
def test_classifier_agrees_with_the_interpreter_on_photos():
    model, info = load_tflite(CLASSIFIER, calibrate=False)
    assert info == {
        "task": "classification",
        "builder": "mobilenet_v2",
        "builder_args": {
            "width_mult": 1.0,
            "num_classes": 1000,
            "output_stride": 32,
            "round_nearest": 8,
            "tf_padding": True,
            "normalization": "tf",
        },  # fmt: skip
        "class_names": None,
        "normalization": "tf",
        "input_scaling": "(pixel - 128) * 0.0078125, inputs in [-1, 0.992] (the input's quantisation)",
        "input_size": [224, 224],
    }
    for name, expected in (("cat.bmp", 285), ("grace_hopper.bmp", 652), ("bird_segmentation.bmp", 21)):
        image = _photo(name, 224)
        probabilities = _run_interpreter(CLASSIFIER, image)["MobilenetV2/Predictions/Softmax"]
        logits = _ours(model, image)
        # Background dropped: our class i is TF's i + 1 (285 Egyptian cat, 652 military uniform, 21 kite).
        assert logits.argmax() == probabilities[1:].argmax() == expected, name


@needs_google
def test_imagenet_labels_are_torchvisions_classes_in_order():
    import torchvision  # noqa: PLC0415

    model, info = load_tflite(CLASSIFIER, labels=GOOGLE / "imagenet_labels.txt", calibrate=False)
    names = info["class_names"]
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(names) == len(categories) == 1000 and names[0] == "tench, Tinca tinca"
    different = [(i, a, b) for i, (a, b) in enumerate(zip(names, categories)) if a.split(",")[0] != b]
    # torchvision renamed the two duplicate names of the ImageNet synsets; the order is the same.
    assert different == [(134, "crane", "crane bird"), (639, "maillot, tank suit", "maillot tank suit")]

    with_background, info = load_tflite(
        CLASSIFIER, labels=GOOGLE / "imagenet_labels.txt", keep_background=True, calibrate=False
    )
    assert info["builder_args"]["num_classes"] == 1001 and info["class_names"][:2] == ["background", names[0]]
    image = _photo("cat.bmp", 224)
    np.testing.assert_allclose(_ours(with_background, image)[1:], _ours(model, image), rtol=1e-5, atol=1e-5)


@needs_google
def test_deeplab_agrees_with_the_interpreter_on_the_bird():
    model, info = load_tflite(DEEPLAB, labels=GOOGLE / "pascal_voc_segmentation_labels.txt", calibrate=False)
    assert info["builder_args"] == {
        "num_classes": 21,
        "width_mult": 1.0,
        "output_stride": 16,
        "aspp": False,
        "round_nearest": 8,
        "tf_padding": True,
        "align_corners": True,
        "normalization": "tf",
    }
    assert info["task"] == "segmentation" and info["input_size"] == [513, 513]
    assert len(info["class_names"]) == 21 and info["class_names"][3] == "bird"
    image = _photo("bird_segmentation.bmp")
    mask = np.array(Image.open(GOOGLE / "bird_segmentation_mask.bmp"))
    reference = _run_interpreter(DEEPLAB, image)["ArgMax"]
    ours = _ours(model, image).argmax(-1)
    assert (ours == reference).mean() >= 0.995

    def miou(labels: np.ndarray) -> float:
        valid = (mask == 0) | (mask == 3)  # 1 and 2 mark the outline: ignored
        return np.mean([((labels == c) & (mask == c) & valid).sum() / (((labels == c) | (mask == c)) & valid).sum() for c in (0, 3)])  # fmt: skip

    assert miou(reference) > 0.9
    assert abs(miou(ours) - miou(reference)) <= 0.005


@needs_google
def test_builder_args_rebuild_the_same_network():
    for path, builder in ((CLASSIFIER, mobilenet_v2), (DEEPLAB, deeplabv3_mobilenet_v2)):
        model, info = load_tflite(path, calibrate=False)
        rebuilt = builder(**info["builder_args"]).eval()
        rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
        x = torch.randint(0, 256, (1, 3, 64, 96)).float() / 255
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x), model(x))


@needs_google
def test_calibrated_import_keeps_the_output():
    folded, _ = load_tflite(CLASSIFIER, calibrate=False)
    calibrated, _ = load_tflite(CLASSIFIER, num_calibration_images=8)  # generated scenes
    image = _photo("grace_hopper.bmp", 224)
    np.testing.assert_allclose(_ours(calibrated, image), _ours(folded, image), rtol=1e-4, atol=1e-4)
    bn = calibrated.backbone.features[5].expand[1]
    assert bn.running_var.std() > 0.05 and bn.running_mean.abs().max() > 0.1
    assert torch.allclose(folded.backbone.features[5].expand[1].running_var, torch.tensor(1.0), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Float copies: exact references


@pytest.fixture(scope="module")
def float_files(tmp_path_factory):
    if not (CLASSIFIER.is_file() and DEEPLAB.is_file()):
        pytest.skip("Google's models in ../shared/models/google are not present")
    folder = tmp_path_factory.mktemp("float_tflite")
    classifier = float_copy(read_tflite(CLASSIFIER), extra_outputs=("Logits/Squeeze1",))
    deeplab = float_copy(read_tflite(DEEPLAB), extra_outputs=("ResizeBilinear_2",))
    return {
        "classifier": write_tflite(classifier, folder / "classifier_float.tflite"),
        "deeplab": write_tflite(deeplab, folder / "deeplab_float.tflite"),
        "deeplab_dm05": write_tflite(halve_channels(deeplab), folder / "deeplab_dm05_float.tflite"),
        "deeplab_os8": write_tflite(output_stride_8(deeplab), folder / "deeplab_os8_float.tflite"),
        "classifier_graph": classifier,
    }


def test_float_classifier_is_exact(float_files):
    path = float_files["classifier"]
    model, info = load_tflite(path, calibrate=False)
    assert info["builder_args"]["tf_padding"] and info["builder_args"]["num_classes"] == 1000
    image = _photo("cat.bmp", 224)
    x = tf_model_input(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    reference = _run_interpreter(path, x)["MobilenetV2/Logits/Squeeze1"][1:]
    assert np.abs(_ours(model, image) - reference).max() < 1e-3
    # PyTorch's own padding (1, 1) instead of TF's (0, 1) at 224 moves the logits by whole units.
    torch_padding = mobilenet_v2(**{**info["builder_args"], "tf_padding": False}).eval()
    torch_padding.load_state_dict(model.state_dict())
    assert np.abs(_ours(torch_padding, image) - reference).max() > 0.5


def test_float_deeplab_is_exact(float_files):
    path = float_files["deeplab"]
    model, info = load_tflite(path, calibrate=False)
    assert info["builder_args"]["align_corners"] is True
    image = _photo("bird_segmentation.bmp")
    x = tf_model_input(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    outputs = _run_interpreter(path, x)
    reference = outputs["ResizeBilinear_2"]
    ours = _ours(model, image)
    assert np.abs(ours - reference).max() < 1e-3
    assert (ours.argmax(-1) == outputs["ArgMax"]).all()
    # Both TF conventions matter: corners not aligned, or the head's concat in torchvision's order.
    model.align_corners = False
    assert np.abs(_ours(model, image) - reference).max() > 0.5
    model.align_corners = True
    projection = model.aspp.project[0].weight
    projection.data = torch.cat([projection[:, 256:], projection[:, :256]], dim=1)
    assert np.abs(_ours(model, image) - reference).max() > 0.5


def test_float16_weights_are_read_through_their_dequantize_ops(float_files, tmp_path):
    path = write_tflite(float16_weights(float_files["classifier_graph"]), tmp_path / "fp16.tflite")
    assert sum(op.op == "DEQUANTIZE" for op in read_tflite(path).operators) == 2 * 53
    model, _ = load_tflite(path, calibrate=False)
    image = _photo("grace_hopper.bmp", 224)
    x = tf_model_input(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    reference = _run_interpreter(path, x)["MobilenetV2/Logits/Squeeze1"][1:]
    assert np.abs(_ours(model, image) - reference).max() < 1e-3


@pytest.mark.parametrize("width, size", [(0.35, 96), (0.75, 192)])
def test_classifiers_of_other_widths_and_sizes_are_exact(float_files, tmp_path, width, size):
    """Google released the classifier at widths 0.35-1.4 and sizes 96-224: width and size are read
    off the graph (here Google's graph cut down to that width and size)."""
    path = write_tflite(narrow_classifier(float_files["classifier_graph"], width, size), tmp_path / "narrow.tflite")
    model, info = load_tflite(path, calibrate=False)
    assert info["builder_args"]["width_mult"] == width and info["builder_args"]["round_nearest"] == 8
    assert info["input_size"] == [size, size]
    image = _photo("cat.bmp", size)
    x = tf_model_input(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    reference = _run_interpreter(path, x)["MobilenetV2/Logits/Squeeze1"][1:]
    assert np.abs(_ours(model, image) - reference).max() < 1e-3


@pytest.mark.parametrize(
    "variant, expected",
    [
        # Width 0.5 as DeepLab builds it (channels rounded to 1): 12 channels at layer 4, not 16.
        ("deeplab_dm05", {"width_mult": 0.5, "round_nearest": 1, "output_stride": 16}),
        # Output stride 8 from the same weights: TF's rates are this project's dilations.
        ("deeplab_os8", {"width_mult": 1.0, "round_nearest": 8, "output_stride": 8}),
    ],
)
def test_deeplab_variants_are_exact(float_files, variant, expected):
    path = float_files[variant]
    model, info = load_tflite(path, calibrate=False)
    assert {key: info["builder_args"][key] for key in expected} == expected
    assert model.backbone.feature_info["layer4"].channels == 24 * expected["width_mult"]
    image = _photo("bird_segmentation.bmp")
    x = tf_model_input(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    reference = _run_interpreter(path, x)["ResizeBilinear_2"]
    assert np.abs(_ours(model, image) - reference).max() < 1e-3


def test_unrecognised_graphs_name_the_operator_and_tensor(float_files, tmp_path):
    graph: Graph = float_files["classifier_graph"]
    stem = graph.operators[0]
    relu_stem = replace(graph, operators=[replace(stem, options={**stem.options, "activation": "RELU"}), *graph.operators[1:]])  # fmt: skip
    with pytest.raises(TFLiteImportError, match=r"relu\.tflite: not a supported graph: at operator 0 \(CONV_2D\), tensor '.*Conv.*': stem: expected fused activation RELU6, found RELU"):  # fmt: skip
        load_tflite(write_tflite(relu_stem, tmp_path / "relu.tflite"), calibrate=False)

    # An operator the walk does not know, after the logits.
    logits = next(i for i, t in enumerate(graph.tensors) if t.name.endswith("Logits/Squeeze1"))
    extra = Tensor("extra/tanh", graph.tensors[logits].shape, np.dtype(np.float32))
    tanh = replace(graph, tensors=[*graph.tensors, extra], operators=[*graph.operators, Operator("TANH", [logits], [len(graph.tensors)])])  # fmt: skip
    with pytest.raises(TFLiteImportError, match=r"operator 66 \(TANH\), tensor 'extra/tanh': operator not part of"):
        load_tflite(write_tflite(tanh, tmp_path / "tanh.tflite"), calibrate=False)

    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    with pytest.raises(TFLiteImportError, match=r"labels\.txt' has 2 names; the model has 1000 classes \(1001 with the background\)"):  # fmt: skip
        load_tflite(float_files["classifier"], labels=labels, calibrate=False)


# --------------------------------------------------------------------------------------------------
# Google's other releases: the iNaturalist classifier (fully connected logits), and the families
# not converted yet, refused with the family message


INAT_BIRDS = GOOGLE / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"
INAT_LOGITS = "Logits/MatMul;Logits/BiasAdd"


@pytest.mark.skipif(not INAT_BIRDS.is_file(), reason=f"{INAT_BIRDS.name} is not in ../shared/models/google")
def test_inat_birds_fully_connected_logits_agree_with_the_interpreter(tmp_path):
    model, info = load_tflite(INAT_BIRDS, labels=GOOGLE / "inat_bird_labels.txt", calibrate=False)
    # 965 outputs, the background the last: nothing dropped (only TF-slim's 1001 drop class 0).
    assert info["builder_args"]["num_classes"] == 965 and len(info["class_names"]) == 965
    assert info["class_names"][-1] == "background" and info["class_names"][3] == "Cyanocitta cristata (Blue Jay)"
    for name in ("cat.bmp", "grace_hopper.bmp"):  # no bird in either: the background wins, by far
        image = _photo(name, 224)
        probabilities = _run_interpreter(INAT_BIRDS, image)["prediction"]
        assert _ours(model, image).argmax() == probabilities.argmax() == 964, name
    # The fully connected layer's weights against the interpreter without quantisation noise: on the
    # bird photo (a jay-like bird, which the uint8 file is unsure about: 17/256 against 13/256) the
    # float copy's logits are ours.
    exact = write_tflite(float_copy(read_tflite(INAT_BIRDS), extra_outputs=(INAT_LOGITS,)), tmp_path / "inat_float.tflite")  # fmt: skip
    for name in ("bird_segmentation.bmp", "cat.bmp"):
        image = _photo(name, 224)
        x = tf_model_input(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        reference = _run_interpreter(exact, x)[INAT_LOGITS]
        ours = _ours(model, image)
        assert np.abs(ours - reference).max() < 1e-3 * max(1.0, np.abs(reference).max()), name
        assert ours.argmax() == reference.argmax()


# The TF2 / Keras MobileNetV2 (MEAN pooling; input scaled as (pixel - 127) / 127.5) and TF-slim's
# MobileNetV1 0.25 at 128 px: the converted network at its size (parameters and MACs as TF-slim's
# tables give them: V2 1.0 at 224 3.47M with 1001 classes / 300M MACs; V1 0.25 at 128 0.47M / 14M),
# the interpreter's top-1 on every photo fed the same pixels (the whole photo resized, as Google's
# label_image feeds it), and the logits of the file's float copy to 1e-4.
OTHER_FAMILIES = {
    "keras_v2": (
        "tf2_mobilenet_v2_1.0_224_ptq.tflite",
        "mobilenet_v2",
        224,
        (3_504_872, 300_774_272),
        {"mean": [127 / 255] * 3, "std": [0.5] * 3},
    ),
    "slim_v1": (
        "mobilenet_v1_0.25_128_quant.tflite",
        "mobilenet_v1",
        128,
        (470_072, 13_570_048),
        "tf",
    ),
}  # fmt: skip


@pytest.mark.parametrize("key", list(OTHER_FAMILIES))
def test_googles_keras_and_v1_files_agree_with_the_interpreter(key, tmp_path):
    from vision_mnv2.complexity import count_macs, count_parameters  # noqa: PLC0415

    name, builder, size, (params, macs), normalization = OTHER_FAMILIES[key]
    path = GOOGLE / name
    if not path.is_file():
        pytest.skip(f"{name} is not in ../shared/models/google")
    model, info = load_tflite(path, labels=GOOGLE / "imagenet_labels.txt", calibrate=False)
    assert info["builder"] == builder and info["input_size"] == [size, size]
    assert info["normalization"] == normalization and info["builder_args"]["normalization"] == normalization
    assert info["class_names"][0].startswith("tench") and len(info["class_names"]) == 1000
    assert (count_parameters(model), count_macs(model, (size, size))) == (params, macs)
    for photo in ("cat.bmp", "grace_hopper.bmp", "bird_segmentation.bmp"):
        image = _photo(photo, size)
        probabilities = next(iter(_run_interpreter(path, image).values()))
        assert _ours(model, image).argmax() == probabilities[1:].argmax(), photo
    # The float copy takes the float network's input: the scaling the checkpoint records.
    graph = read_tflite(path)
    logits_name = graph.tensors[[op for op in graph.operators if op.op == "CONV_2D"][-1].outputs[0]].name
    exact = write_tflite(float_copy(graph, extra_outputs=(logits_name,)), tmp_path / "float.tflite")
    statistics = model.normalize.normalization
    for photo in ("cat.bmp", "grace_hopper.bmp"):
        image = _photo(photo, size)
        x = ((image / 255.0 - np.array(statistics.mean)) / np.array(statistics.std)).astype(np.float32)
        reference = _run_interpreter(exact, x)[logits_name].reshape(-1)[1:]
        assert np.abs(_ours(model, image) - reference).max() < 1e-4 * max(1.0, np.abs(reference).max()), photo


@needs_google
def test_the_preprocessing_choice_is_googles_either_way(tmp_path):
    """Grace Hopper through the converted classifier's pipeline: fed as TF-slim evaluates (the
    central 87.5%) or as label_image feeds it (the whole photo), top-1 is the interpreter's fed the
    same pixels; the two feeds answer differently (mortarboard against military uniform)."""
    from vision_mnv2.convert.tflite_checkpoint import convert_tflite  # noqa: PLC0415

    image = np.array(Image.open(GOOGLE / "grace_hopper.bmp").convert("RGB"))
    answers = {}
    for mode in ("crop", "resize"):
        path, meta = convert_tflite(CLASSIFIER, tmp_path / f"{mode}.ckpt", labels=GOOGLE / "imagenet_labels.txt", preprocessing=mode)  # fmt: skip
        assert meta.preprocessing["mode"] == mode
        pipeline = vision_mnv2.load(path)
        pixels = (pipeline.preprocess(image)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        probabilities = _run_interpreter(CLASSIFIER, pixels)["MobilenetV2/Predictions/Softmax"][1:]
        top = pipeline(image)[0]["top"][0]
        assert top["label"] == probabilities.argmax(), mode
        answers[mode] = top["class"]
    assert answers == {"crop": "mortarboard", "resize": "military uniform"}
