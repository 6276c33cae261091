"""The converter on TFLite files generated here (tests/tflite_models.py), so that its whole path runs
without Google's files: each file runs in the TFLite interpreter, ``tools/convert.py`` converts it
(the command of the README, in a subprocess) as :func:`convert_tflite` does, and the checkpoint
predicts what the interpreter does. Where Google's files are present, the generated graphs are
checked to be built exactly as Google's are, so that the generator cannot drift from what Google
ships."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_mnv2.checkpoint import load_model, read_checkpoint
from vision_mnv2.convert import read_tflite

from .command_server import CommandServer
from .helpers import GOOGLE_CLASSIFIER, GOOGLE_DEEPLAB, GOOGLE_MODELS, REPO_ROOT, needs_google

pytest.importorskip("tflite")
Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

from .test_tflite_import import _ours  # noqa: E402
from .tflite_models import (  # noqa: E402
    VOC_LABELS,
    deeplab_v3_mobilenet_v2,
    edgetpu_compiled,
    keras_mobilenet_v2_classifier,
    mobilenet_v1_start,
    probe_images,
    sample_images,
    tf_slim_mobilenet_v1_classifier,
    tf_slim_mobilenet_v2_classifier,
    write_imagenet_labels,
    write_voc_labels,
)
from .tflite_writer import float_copy, write_tflite  # noqa: E402

# Small enough to convert in a second or two: the classifier as Google's smallest release (width
# 0.35 at 96 px), DeepLab as its narrow release (width 0.5, channels rounded to 1) at 65 px (16k + 1
# as DeepLab's sizes are: a 5 x 5 feature map at output stride 16).
CLASSIFIER = {"width": 0.35, "size": 96}
DEEPLAB = {"width": 0.5, "size": 65}
# Named as Google names these releases.
FILES = {
    "classifier_quant": ("mobilenet_v2_0.35_96_quant.tflite", tf_slim_mobilenet_v2_classifier, {**CLASSIFIER, "quantized": True}),
    "classifier_float": ("mobilenet_v2_0.35_96.tflite", tf_slim_mobilenet_v2_classifier, {**CLASSIFIER, "quantized": False}),
    "deeplab_quant": ("deeplabv3_mnv2_dm05_pascal_quant.tflite", deeplab_v3_mobilenet_v2, {**DEEPLAB, "quantized": True}),
    "deeplab_float": ("deeplabv3_mnv2_dm05_pascal.tflite", deeplab_v3_mobilenet_v2, {**DEEPLAB, "quantized": False}),
}  # fmt: skip
CLASSIFIER_LOGITS = "MobilenetV2/Logits/Squeeze1"
DEEPLAB_LOGITS = "ResizeBilinear_2"  # upsampled to the image, before the argmax


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here as in the converting subprocesses: these are small convolutions,
    which a second thread barely speeds up, and on 2 cores shared with the subprocesses (or other
    work) threads waiting for each other made the module take several times as long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def commands():
    """``python tools/convert.py ...`` as a user runs it, each in a process of its own, forked from
    one that imported torch once (tests/command_server.py)."""
    server = CommandServer()
    try:
        yield server
    finally:
        server.close()


def _convert(commands: CommandServer, arguments: list[str]) -> dict:
    done = commands.run(["python", "tools/convert.py", *arguments], REPO_ROOT, {**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, commands) -> dict[str, dict]:
    """The four files, each converted by ``tools/convert.py`` in a process of its own (the README's
    commands: ImageNet-style labels for the classifiers, VOC labels and ``--calibration photos/``
    for DeepLab) and by :func:`convert_tflite` with the same arguments."""
    from vision_mnv2.convert.tflite_checkpoint import convert_tflite  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("generated_tflite")
    imagenet_labels = write_imagenet_labels(folder / "imagenet_labels.txt")
    voc_labels = write_voc_labels(folder / "pascal_voc_segmentation_labels.txt")
    photos = folder / "photos"
    photos.mkdir()
    for number, image in enumerate(sample_images(4, (80, 72), seed=5)):
        Image.fromarray(image).save(photos / f"photo_{number}.png")

    files = {}
    for key, (name, generate, arguments) in FILES.items():
        path = generate(folder / name, **arguments)
        deeplab = key.startswith("deeplab")
        options = {"labels": voc_labels if deeplab else imagenet_labels, "calibration": photos if deeplab else None}
        files[key] = {"path": path, **options}
    for key, file in files.items():
        arguments = [str(file["path"]), "--labels", str(file["labels"]), "--output", str(folder / f"{key}_cli.ckpt")]
        if file["calibration"] is not None:
            arguments += ["--calibration", str(file["calibration"])]
        file.update(_convert(commands, arguments), cli_checkpoint=folder / f"{key}_cli.ckpt")
        file["api_checkpoint"], _ = convert_tflite(file["path"], folder / f"{key}_api.ckpt", labels=file["labels"], calibration=file["calibration"])  # fmt: skip
    return files


def _interpreter_tensors(
    path: Path, image: np.ndarray, names: tuple[str, ...], float_input: tuple[float, int] = (1 / 128, 128)
) -> dict[str, np.ndarray]:
    """Tensors of one run of the interpreter by name (dequantised where quantised); ``image`` is
    uint8 H x W x 3, given to float graphs as ``scale * (pixel - zero_point)`` of ``float_input``
    (TF's ``(pixel - 128) / 128`` unless said)."""
    with warnings.catch_warnings():  # keeping every tensor is "for debugging": what this is
        warnings.simplefilter("ignore", UserWarning)
        runner = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    runner.allocate_tensors()
    (entry,) = runner.get_input_details()
    scale, zero_point = float_input
    value = image[None] if entry["dtype"] == np.uint8 else (image[None].astype(np.float32) - zero_point) * scale
    runner.set_tensor(entry["index"], value.astype(entry["dtype"]))
    runner.invoke()
    found = {}
    for detail in runner.get_tensor_details():
        if detail["name"] in names:
            tensor = runner.get_tensor(detail["index"])[0]
            scale, zero_point = detail["quantization"]
            found[detail["name"]] = (tensor.astype(np.float32) - zero_point) * scale if scale else tensor
    assert set(found) == set(names), f"{path.name} has no tensor(s) {set(names) - set(found)}"
    return found


def _float_copy(path: Path, folder: Path) -> Path:
    """The quantised file with every constant dequantised and float activations: what the
    converter computes, run by the interpreter (the exact reference for a quantised file)."""
    return write_tflite(float_copy(read_tflite(path)), folder / f"{path.stem}_float_copy.tflite")


# --------------------------------------------------------------------------------------------------
# Converting


@pytest.mark.parametrize("key", list(FILES))
def test_the_readme_command_converts_the_file_as_the_api_does(converted, key):
    file = converted[key]
    assert file["returncode"] == 0, file["stderr"]
    assert "Traceback" not in file["stderr"] and "written to" in file["stdout"]
    cli_state, cli_meta = read_checkpoint(file["cli_checkpoint"])
    api_state, api_meta = read_checkpoint(file["api_checkpoint"])
    assert cli_meta.as_dict() == api_meta.as_dict()
    assert cli_state.keys() == api_state.keys()
    for (
        name,
        value,
    ) in cli_state.items():  # the same up to float rounding (batch-norm statistics summed in another order)
        torch.testing.assert_close(value, api_state[name], rtol=1e-5, atol=1e-6, msg=name)
    assert cli_meta.training["converted_from"] == file["path"].name and cli_meta.normalization["name"] == "tf"
    if key.startswith("classifier"):
        assert (
            "(mobilenet_v2, width 0.35, 1000 classes, input 96x96, normalization tf, photos fed by crop 0.875)"
            in file["stdout"]
        )
        expected = {
            "width_mult": 0.35,
            "num_classes": 1000,
            "output_stride": 32,
            "round_nearest": 8,
            "tf_padding": True,
        }
        # Google's labels: background first, dropped with its logit; class i is then torchvision's i.
        assert len(cli_meta.class_names) == 1000 and cli_meta.class_names[:2] == ["class 1", "class 2"]
    else:
        expected = {"num_classes": 21, "width_mult": 0.5, "output_stride": 16, "aspp": False, "round_nearest": 1}
        expected.update(tf_padding=True, align_corners=True)
        assert cli_meta.class_names == list(VOC_LABELS) and cli_meta.preprocessing["pad_to"] == [65, 65]
        assert cli_meta.training["batch_norm_statistics"] == str(file["calibration"])
    assert {key: cli_meta.builder_args[key] for key in expected} == expected


# --------------------------------------------------------------------------------------------------
# Predictions against the interpreter


def test_float_classifier_gives_the_interpreters_logits(converted):
    file = converted["classifier_float"]
    model, _ = load_model(file["cli_checkpoint"])
    winners = set()
    for image in probe_images(CLASSIFIER["size"]):
        reference = _interpreter_tensors(file["path"], image, (CLASSIFIER_LOGITS,))[CLASSIFIER_LOGITS][1:]
        ours = _ours(model, image)
        assert np.abs(ours - reference).max() < 1e-4 * max(1.0, np.abs(reference).max())
        winners.add(int(reference.argmax()))
        assert np.sort(reference)[-1] - np.sort(reference)[-2] > 2.5  # sure of its class, as trained ones are
    assert len(winners) == len(probe_images(CLASSIFIER["size"]))  # a class of its own for each probe image


def test_quantised_classifier_agrees_with_the_interpreter(converted, tmp_path):
    file = converted["classifier_quant"]
    model, _ = load_model(file["cli_checkpoint"])
    exact = _float_copy(file["path"], tmp_path)
    for image in probe_images(CLASSIFIER["size"]):
        ours = _ours(model, image)
        # Every uint8 weight and int32 bias dequantised as the interpreter's float copy does.
        reference = _interpreter_tensors(exact, image, (CLASSIFIER_LOGITS,))[CLASSIFIER_LOGITS][1:]
        assert np.abs(ours - reference).max() < 1e-4 * max(1.0, np.abs(reference).max())
        # The uint8 file itself: the activations rounded at each of the 65 layers move the logits
        # by 2-3% of their spread (Google's file: 5%); the top class of a probe image wins by more
        # than 3, more than twice the largest change (seeds 0-5: 3.8 times at least).
        quantised = _interpreter_tensors(file["path"], image, (CLASSIFIER_LOGITS,))[CLASSIFIER_LOGITS][1:]
        error = np.abs(ours - quantised)
        top, runner_up = np.sort(ours)[-2:][::-1]
        assert np.sqrt(np.mean(error**2)) < 0.06 * ours.std(), "uint8 logits far from the float network's"
        assert top - runner_up > 2 * error.max()  # so the top class cannot change ...
        assert quantised.argmax() == ours.argmax()  # ... and does not


def _label_agreement(ours: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(share of pixels where ``ours`` gives the interpreter's label, the same among pixels where
    our two best classes are more than 8 x the RMS logit difference apart, their share)."""
    gap = np.diff(np.sort(ours, axis=-1)[..., -2:], axis=-1)[..., 0]
    sure = gap > 8 * np.sqrt(np.mean((ours - logits) ** 2))
    agree = ours.argmax(-1) == labels
    return float(agree.mean()), float(agree[sure].mean()), float(sure.mean())


def test_float_deeplab_gives_the_interpreters_logits_and_labels(converted):
    file = converted["deeplab_float"]
    model, _ = load_model(file["cli_checkpoint"])
    for image in [*probe_images(DEEPLAB["size"])[:3], *sample_images(2, DEEPLAB["size"], seed=99)]:
        reference = _interpreter_tensors(file["path"], image, (DEEPLAB_LOGITS, "ArgMax"))
        ours = _ours(model, image)
        assert np.abs(ours - reference[DEEPLAB_LOGITS]).max() < 1e-4 * max(1.0, np.abs(ours).max())
        agree, agree_where_sure, sure = _label_agreement(ours, reference[DEEPLAB_LOGITS], reference["ArgMax"])
        assert agree_where_sure == 1.0 and agree > 0.999
        # A label map in regions of a few classes, as a trained model gives.
        assert 3 <= len(np.unique(reference["ArgMax"])) <= 5


def test_quantised_deeplab_agrees_with_the_interpreter(converted, tmp_path):
    file = converted["deeplab_quant"]
    model, _ = load_model(file["cli_checkpoint"])
    exact = _float_copy(file["path"], tmp_path)
    for image in [*probe_images(DEEPLAB["size"])[:3], *sample_images(2, DEEPLAB["size"], seed=99)]:
        ours = _ours(model, image)
        reference = _interpreter_tensors(exact, image, (DEEPLAB_LOGITS,))[DEEPLAB_LOGITS]
        assert np.abs(ours - reference).max() < 1e-4 * max(1.0, np.abs(ours).max())
        # The uint8 file itself: rounding the activations moves the logits by 2-5% of their spread.
        quantised = _interpreter_tensors(file["path"], image, (DEEPLAB_LOGITS, "ArgMax"))
        assert np.sqrt(np.mean((ours - quantised[DEEPLAB_LOGITS]) ** 2)) < 0.08 * ours.std()
        # A label can change only where two classes are about as likely, along region borders, by
        # as much as the logits moved there: on 65 x 65 pixels from a 5 x 5 feature map, a rounding
        # error at one feature cell (up to ~8x the RMS) moves a border by a few pixels. 3-8% of the
        # pixels change (Google's file: 0.5% of the bird's 513 x 513 from 33 x 33), hardly any
        # where the best two classes are 8 RMS apart (seeds 0-5: at least 89% of all pixels agree,
        # 99.2% of those).
        agree, agree_where_sure, sure = _label_agreement(ours, quantised[DEEPLAB_LOGITS], quantised["ArgMax"])
        assert agree > 0.85 and agree_where_sure > 0.98 and sure > 0.4


# --------------------------------------------------------------------------------------------------
# Fully connected logits (the iNaturalist releases), and graphs the converter refuses

# As mobilenet_v2_1.0_224_inat_bird_quant.tflite: 965 outputs, the background the last.
INAT_CLASSES = 965
FC_LOGITS = "Logits/MatMul;Logits/BiasAdd"
FAMILIES = (
    "Supported: MobileNetV2 classifier, TF-slim or TF2/Keras (any width and input size; average pool or MEAN; "
    "logits a 1x1 convolution or fully connected); TF-slim MobileNetV1 classifier (any width and input size); "
    "DeepLab v3 MobileNetV2 with the mobile head (output stride 8 or 16)"
)
# Keras' Dense layer and TF-slim's MobileNetV1 logits, as the generators name them.
KERAS_LOGITS = "predictions/MatMul;predictions/BiasAdd"
V1_LOGITS = "MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd;MobilenetV1/Logits/Conv2d_1c_1x1/Conv2D;MobilenetV1/Logits/Conv2d_1c_1x1/biases1"


@pytest.fixture(scope="module")
def other_graphs(tmp_path_factory, commands) -> dict[str, dict]:
    """A fully connected classifier, a Keras MobileNetV2 (PAD + VALID convolutions, MEAN, Dense;
    input (pixel - 127) / 127.5), a TF-slim MobileNetV1, an Edge TPU compiled file and a graph that
    stops after MobileNetV1's first layer, each given to ``tools/convert.py`` as a user would (each
    in a process of its own)."""
    folder = tmp_path_factory.mktemp("other_graphs")
    inat_labels = folder / "inat_bird_labels.txt"
    inat_labels.write_text("\n".join([f"species {i}" for i in range(INAT_CLASSES - 1)] + ["background"]) + "\n")
    keras_labels = folder / "keras_labels.txt"  # Keras' 1000 classes, no background
    keras_labels.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    imagenet_labels = write_imagenet_labels(folder / "imagenet_labels.txt")
    labels = {"fully_connected": inat_labels, "keras": keras_labels, "keras_rescaling": keras_labels}
    files = {
        "fully_connected": tf_slim_mobilenet_v2_classifier(
            folder / "mobilenet_v2_0.35_96_inat_bird_quant.tflite",
            **CLASSIFIER,
            num_classes=INAT_CLASSES,
            logits="fully_connected",
        ),  # fmt: skip
        "keras": keras_mobilenet_v2_classifier(folder / "keras_mobilenet_v2_0.35_96_ptq.tflite", **CLASSIFIER),
        "keras_rescaling": keras_mobilenet_v2_classifier(
            folder / "keras_mobilenet_v2_0.35_96.tflite", **CLASSIFIER, quantized=False, rescaling=True
        ),  # fmt: skip
        "mobilenet_v1": tf_slim_mobilenet_v1_classifier(
            folder / "mobilenet_v1_0.25_96_quant.tflite", width=0.25, size=96
        ),  # fmt: skip
        "edgetpu": edgetpu_compiled(folder / "mobilenet_v2_0.35_96_quant_edgetpu.tflite", size=96),
        "mobilenet_v1_start": mobilenet_v1_start(folder / "mobilenet_v1_start.tflite"),
    }
    results = {}
    for key, path in files.items():
        arguments = [str(path), "--labels", str(labels.get(key, imagenet_labels)), "--output", str(folder / f"{key}.ckpt")]  # fmt: skip
        results[key] = {"path": path, "checkpoint": folder / f"{key}.ckpt", **_convert(commands, arguments)}
    return results


def test_fully_connected_logits_convert_and_agree_with_the_interpreter(other_graphs, tmp_path):
    file = other_graphs["fully_connected"]
    assert file["returncode"] == 0, file["stderr"]
    assert (
        f"(mobilenet_v2, width 0.35, {INAT_CLASSES} classes, input 96x96, normalization tf, photos fed by crop 0.875)"
        in file["stdout"]
    )
    model, meta = load_model(file["checkpoint"])
    # Not TF-slim's 1001: no class dropped, the background keeps its place (the last).
    assert meta.num_classes == INAT_CLASSES and meta.class_names[-1] == "background"
    assert [op.op for op in read_tflite(file["path"]).operators[-2:]] == ["FULLY_CONNECTED", "SOFTMAX"]
    exact = _float_copy(file["path"], tmp_path)
    winners = set()
    for image in probe_images(CLASSIFIER["size"]):
        ours = _ours(model, image)
        reference = _interpreter_tensors(exact, image, (FC_LOGITS,))[FC_LOGITS]
        assert np.abs(ours - reference).max() < 1e-4 * max(1.0, np.abs(reference).max())
        # The uint8 file itself: each probe image has a class of its own by a wide margin.
        quantised = _interpreter_tensors(file["path"], image, (FC_LOGITS,))[FC_LOGITS]
        assert quantised.argmax() == ours.argmax()
        winners.add(int(ours.argmax()))
    assert len(winners) == len(probe_images(CLASSIFIER["size"]))


# Per file: builder, normalization recorded, the input scaling in words (its start), the float
# network's input (scale, zero point) and the logits tensor.
OTHER_FAMILIES = {
    "keras": (
        "mobilenet_v2",
        {"name": None, "mean": [127 / 255] * 3, "std": [0.5] * 3},
        "(pixel - 127) * 0.00784314",
        (1 / 127.5, 127),
        KERAS_LOGITS,
    ),  # fmt: skip
    # A float Keras file with its preprocessing in the graph (Rescaling: MUL, ADD): pixels 0..255 in.
    "keras_rescaling": (
        "mobilenet_v2",
        {"name": None, "mean": [0.5] * 3, "std": [0.5] * 3},
        "(pixel - 127.5) * 0.00784314",
        (1.0, 0),
        KERAS_LOGITS,
    ),  # fmt: skip
    "mobilenet_v1": (
        "mobilenet_v1",
        {"name": "tf", "mean": [128 / 255] * 3, "std": [128 / 255] * 3},
        "(pixel - 128) * 0.0078125",
        (1 / 128, 128),
        V1_LOGITS,
    ),  # fmt: skip
}


@pytest.mark.parametrize("key", list(OTHER_FAMILIES))
def test_keras_and_v1_graphs_convert_and_agree_with_the_interpreter(other_graphs, tmp_path, key):
    """The converter's other families through the CLI: the builder and input scaling read off the
    graph and recorded, the float copy's logits to 1e-4, a uint8 file's top-1 on every probe image."""
    builder, normalization, said, float_input, logits = OTHER_FAMILIES[key]
    file = other_graphs[key]
    assert file["returncode"] == 0, file["stderr"]
    model, meta = load_model(file["checkpoint"])
    assert meta.builder == builder and meta.num_classes == 1000 and meta.class_names[0] != "background"
    assert meta.normalization["name"] == normalization["name"]
    for statistic in ("mean", "std"):
        assert meta.normalization[statistic] == pytest.approx(normalization[statistic])
    assert meta.training["input"].startswith(said)
    graph = read_tflite(file["path"])
    quantized = graph.tensors[graph.inputs[0]].type_name == "uint8"
    exact = _float_copy(file["path"], tmp_path)
    winners = set()
    for image in probe_images(CLASSIFIER["size"]):
        ours = _ours(model, image)
        reference = _interpreter_tensors(exact, image, (logits,), float_input)[logits].reshape(-1)
        reference = reference[1:] if reference.size == 1001 else reference
        assert np.abs(ours - reference).max() < 1e-4 * max(1.0, np.abs(reference).max())
        if quantized:
            quantised = _interpreter_tensors(file["path"], image, (logits,))[logits].reshape(-1)
            assert quantised[quantised.size - 1000 :].argmax() == ours.argmax()
        winners.add(int(ours.argmax()))
    assert len(winners) == len(probe_images(CLASSIFIER["size"]))


@pytest.mark.parametrize(
    "key, message",
    [
        (
            "edgetpu",
            "{path}: compiled for the Edge TPU (custom operator 'edgetpu-custom-op'); use the CPU file of the same name without _edgetpu (mobilenet_v2_0.35_96_quant.tflite)",
        ),  # fmt: skip
        (
            "mobilenet_v1_start",
            "{path}: not a supported graph: at operator 3 (AVERAGE_POOL_2D), tensor 'MobilenetV1/MobilenetV1/Conv2d_1_pointwise/Relu6': found 1 MobileNetV1 separable layers where there are 13; the walk stopped here. "
            + FAMILIES,
        ),  # fmt: skip
    ],
)
def test_refused_graphs_get_one_error_line_through_the_cli(other_graphs, key, message):
    file = other_graphs[key]
    assert file["returncode"] == 1 and "Traceback" not in file["stderr"]
    errors = [line for line in file["stderr"].splitlines() if line.startswith("Error:")]
    assert errors == ["Error: " + message.format(path=file["path"])], file["stderr"]
    assert not file["checkpoint"].exists()


# --------------------------------------------------------------------------------------------------
# Built as Google's files are


def _quantisation(tensor) -> dict | None:
    if tensor.scale is None:
        return None
    return {"scales": tensor.scale.size, "axis": tensor.quantized_dimension, "zero_point_0": bool(np.all(tensor.zero_point == 0))}  # fmt: skip


def _tensor(tensor) -> tuple:
    return tensor.name, tensor.shape, tensor.type_name, tensor.data is not None, _quantisation(tensor)


def _quantisation_rules(graph) -> list[str]:
    """Where the graph breaks the rules Google's uint8 files follow (an empty list: none)."""
    broken = []

    def parameters(index: int) -> tuple[float, int]:
        tensor = graph.tensors[index]
        return float(tensor.scale[0]), int(tensor.zero_point[0])

    if parameters(graph.inputs[0]) != (1 / 128, 128):
        broken.append("input: (pixel - 128) / 128")
    for op in graph.operators:
        out = op.outputs[0]
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            expected = np.float32(parameters(op.inputs[0])[0]) * np.float32(parameters(op.inputs[1])[0])
            if not np.isclose(parameters(op.inputs[2])[0], expected, rtol=1e-5) or parameters(op.inputs[2])[1] != 0:
                broken.append(f"operator {op.index}: bias scale = input scale x weight scale, zero point 0")
            if op.options["activation"] == "RELU6" and not np.isclose(parameters(out)[0] * 255, 6.0, rtol=1e-3):
                broken.append(f"operator {op.index}: ReLU6 output on [0, 6]")
            if op.options["activation"] != "NONE" and parameters(out)[1] != 0:
                broken.append(f"operator {op.index}: ReLU output from 0")
        elif op.op in ("AVERAGE_POOL_2D", "RESHAPE", "RESIZE_BILINEAR") and parameters(out) != parameters(op.inputs[0]):
            broken.append(f"operator {op.index}: {op.op} keeps its input's scale")
        elif op.op == "CONCATENATION" and any(parameters(i) != parameters(out) for i in op.inputs):
            broken.append(f"operator {op.index}: concatenation of inputs at its own scale")
        elif op.op == "SOFTMAX" and parameters(out) != (1 / 256, 0):
            broken.append(f"operator {op.index}: probabilities at 1/256")
    return broken


@needs_google
@pytest.mark.parametrize(
    "google, generate, arguments",
    [
        (GOOGLE_CLASSIFIER, tf_slim_mobilenet_v2_classifier, {"width": 1.0, "size": 224}),
        (GOOGLE_DEEPLAB, deeplab_v3_mobilenet_v2, {"width": 1.0, "size": 513}),
    ],
    ids=["classifier", "deeplab"],
)
def test_generated_graph_is_built_as_googles(tmp_path, google, generate, arguments):
    """Every tensor (name, shape, type, constant or not, quantisation layout) in the same place of
    the table, every operator with the same options reading and writing the same tensors."""
    real = read_tflite(google)
    generated = read_tflite(generate(tmp_path / google.name, **arguments, quantized=True))
    assert [_tensor(t) for t in generated.tensors] == [_tensor(t) for t in real.tensors]
    operators = [(op.op, op.inputs, op.outputs, op.options) for op in generated.operators]
    assert operators == [(op.op, op.inputs, op.outputs, op.options) for op in real.operators]
    assert (generated.inputs, generated.outputs) == (real.inputs, real.outputs)
    assert _quantisation_rules(real) == [] and _quantisation_rules(generated) == []


@needs_google
def test_label_files_are_googles():
    google = (GOOGLE_MODELS / "pascal_voc_segmentation_labels.txt").read_text().split("\n\n")[0].split()
    assert google == list(VOC_LABELS)
    assert (GOOGLE_MODELS / "imagenet_labels.txt").read_text().splitlines()[0] == "background"
    assert len((GOOGLE_MODELS / "imagenet_labels.txt").read_text().splitlines()) == 1001


@pytest.mark.parametrize("key", ["classifier", "deeplab"])
def test_float_files_are_the_quantised_graphs_in_float(converted, key):
    """The float files are what ``float_copy`` makes of the quantised ones (as the import tests make
    float copies of Google's): the same operators, tensor names and shapes, all float32, without
    the QUANTIZE in front of DeepLab's concatenation."""

    def operators(graph):
        return [(op.op, op.options, [_tensor(graph.tensors[i]) for i in (*op.inputs, *op.outputs)]) for op in graph.operators]  # fmt: skip

    quantised = read_tflite(converted[f"{key}_quant"]["path"])
    float_graph = read_tflite(converted[f"{key}_float"]["path"])
    copy = read_tflite(
        write_tflite(float_copy(quantised), converted[f"{key}_quant"]["path"].with_suffix(".copy.tflite"))
    )
    assert operators(float_graph) == operators(copy)
    assert [op.op for op in quantised.operators if op.op == "QUANTIZE"] == (["QUANTIZE"] if key == "deeplab" else [])


def test_an_int8_input_is_fed_pixels_minus_128(tmp_path):
    """int8 files take pixel - 128: the input's zero point counts from there (scale 1/128, zero
    point 0 is TF's (pixel - 128) / 128; scale 1/127.5, zero point -1 is Keras' (pixel - 127) / 127.5)."""
    from dataclasses import replace  # noqa: PLC0415

    from vision_mnv2.convert import TFLiteUnsupportedGraph, load_tflite  # noqa: PLC0415

    from .tflite_models import tf_slim_mobilenet_v2_classifier_graph  # noqa: PLC0415

    graph = tf_slim_mobilenet_v2_classifier_graph(**CLASSIFIER, quantized=True)
    image = graph.inputs[0]
    for (scale, zero_point), expected in (((1 / 128, 0), "(pixel - 128) * 0.0078125"), ((1 / 127.5, -1), "(pixel - 127) * 0.00784314")):  # fmt: skip
        tensors = list(graph.tensors)
        tensors[image] = replace(tensors[image], dtype=np.dtype(np.int8), scale=np.array([scale], np.float32), zero_point=np.array([zero_point]))  # fmt: skip
        path = write_tflite(replace(graph, tensors=tensors), tmp_path / "int8_input.tflite")
        _, info = load_tflite(path, calibrate=False)
        assert info["input_scaling"].startswith(expected)
        assert (info["normalization"] == "tf") == (zero_point == 0)
    # One scale per colour: refused, not read as a float input.
    tensors = list(graph.tensors)
    tensors[image] = replace(tensors[image], scale=np.full(3, 1 / 128, np.float32), zero_point=np.full(3, 128), axis=3)
    path = write_tflite(replace(graph, tensors=tensors), tmp_path / "per_channel_input.tflite")
    with pytest.raises(
        TFLiteUnsupportedGraph, match="a uint8 image input needs one scale and zero point, found 3 scales"
    ):
        load_tflite(path, calibrate=False)
