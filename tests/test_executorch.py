"""On-device export (ExecuTorch, XNNPACK) through the Python API: the formats and precisions refused
by name, a program's description (sidecar) and fixed input size, and int8 with dynamic sizes.

Each task's programs, float32 and int8, come from the documentation's own export commands, checked
against their checkpoints in tests/test_readme.py (each lowering takes tens of seconds to minutes:
they are made once). Marked ``programs``, as those commands are: CI's second stage. Needs the
optional extra ``mobile`` (``executorch``); skips when it is absent."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vision_mnv2
from tasks.cli import with_task_from_checkpoint
from tasks.inference import export
from vision_mnv2.checkpoint import save_model
from vision_mnv2.executorch_export import sidecar_path, write_executorch
from vision_mnv2.models import mobilenet_v2
from vision_mnv2.pipelines import ExecuTorchRunner, describe

from .helpers import compose_config, realistic_batch_norm

executorch = pytest.importorskip(
    "executorch", reason="ExecuTorch export needs the optional extra: pip install '.[mobile]'"
)
# Every test here lowers a program: CI's second stage (pyproject.toml's `programs` marker).
pytestmark = pytest.mark.programs


def _tool_config(name: str, overrides: list[str], output_dir):
    return compose_config(name, with_task_from_checkpoint(["tool", *overrides])[1:], output_dir)


def _checkpoint(tmp_path, task, build, size, **kwargs):
    torch.manual_seed(0)
    model = realistic_batch_norm(build(**kwargs))
    names = [f"c{i}" for i in range(kwargs["num_classes"])]
    meta = describe(task, model, {"image_size": size}, class_names=names)
    if task == "detection":
        meta.category_ids = [3, 7, 11][: kwargs["num_classes"]]
    return save_model(tmp_path / f"{task}.ckpt", model, meta)


def test_bad_format_names_are_errors(tmp_path):
    ckpt = _checkpoint(tmp_path, "classification", mobilenet_v2, 64, num_classes=4, width_mult=0.35)
    with pytest.raises(ValueError, match="export.format must be one of .*'tflite'"):
        export(_tool_config("export", [f"ckpt_path={ckpt}", "export.format=tflite"], tmp_path / "a"))
    with pytest.raises(ValueError, match="export.quantize='int8'.*executorch"):
        export(_tool_config("export", [f"ckpt_path={ckpt}", "export.quantize=int8"], tmp_path / "b"))
    with pytest.raises(ValueError, match="export.quantize='int4'"):
        export(_tool_config("export", [f"ckpt_path={ckpt}", "export.format=executorch", "export.quantize=int4"], tmp_path / "c"))  # fmt: skip
    with pytest.raises(ValueError, match="quantize must be one of"):
        write_executorch(torch.nn.Identity(), tmp_path / "x.pte", torch.rand(1, 3, 8, 8), {}, quantize="fp16")
    # A program exported at a fixed size says so when fed another.
    conv = torch.nn.Conv2d(3, 2, 1)
    fixed = write_executorch(conv, tmp_path / "fixed.pte", torch.rand(1, 3, 8, 8), {"note": "x"})
    described = json.loads(sidecar_path(fixed).read_text())
    assert described.keys() == {"note", "program"} and described["note"] == "x"
    assert described["program"]["file"] == "fixed.pte" and described["program"]["bytes"] == fixed.stat().st_size
    runner = ExecuTorchRunner(fixed, input_shape=[1, 3, 8, 8])
    image = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(runner(image)[0], conv(image).detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"fixed\.pte: the program takes images of \[3, 8, 8\].*got \[3, 9, 9\]"):
        runner(torch.rand(1, 3, 9, 9))
    (tmp_path / "lost.pte").write_bytes(b"not a program")
    with pytest.raises(ValueError, match=r"lost\.pte: its description lost\.pte\.json is missing"):
        vision_mnv2.load(tmp_path / "lost.pte")


@pytest.mark.slow
def test_int8_program_takes_any_size(tmp_path):
    """int8 with dynamic height and width (as segmentation exports), on a network small enough to
    lower in seconds: the quantised convolutions and the resize to the input's size follow it."""
    torch.manual_seed(0)
    network = _ResizeBack().eval()
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.rand(1, 3, 64, 80, generator=generator) for _ in range(4)]
    dynamic = ({2: torch.export.Dim("height", min=16, max=512), 3: torch.export.Dim("width", min=16, max=512)},)
    path = write_executorch(network, tmp_path / "toy.pte", calibration[0], {}, dynamic, "int8", calibration)
    runner = ExecuTorchRunner(path)
    for height, width in ((64, 80), (72, 56)):
        image = torch.rand(1, 3, height, width, generator=generator)
        (output,) = runner(image)
        with torch.no_grad():
            reference = network(image)
        assert output.shape == reference.shape == (1, 3, height, width)
        # Measured: within 0.003 of outputs reaching 0.37 (0.8%); 5% is far below a broken scale.
        assert (output - reference).abs().max() < 0.05 * reference.abs().max()


class _ResizeBack(nn.Module):
    """Two convolutions at half resolution, resized back to the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6(), nn.Conv2d(8, 3, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.down(images), size=images.shape[-2:], mode="bilinear", align_corners=False)
