"""What a user reads when something goes wrong (or right): every message says what happened, names
the file and says what to do, without a traceback unless asked for (HYDRA_FULL_ERROR=1). The tools
run as a user runs them, each in a process of its own from the repository root (forked from one
that imported torch once: tests/command_server.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks import cli
from tasks.atomic_checkpoint_io import AtomicCheckpointIO
from tasks.segmentation import check_training_batch_size
from vision_mnv2 import files
from vision_mnv2.checkpoint import save_model
from vision_mnv2.data import write_classification_dataset, write_segmentation_dataset
from vision_mnv2.files import UnreadableFile, WriteFailed, load_torch_file
from vision_mnv2.models import mobilenet_v2
from vision_mnv2.pipelines import describe

from .command_server import CommandServer
from .helpers import REPO_ROOT

HINT = "(set HYDRA_FULL_ERROR=1 for the traceback)"


def user_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the traceback switch (a user's default), plus ``extra``."""
    switches = ("HYDRA_FULL_ERROR", "VISION_MNV2_SHORT_ERRORS")
    return {**{k: v for k, v in os.environ.items() if k not in switches}, **extra}


_SERVER: CommandServer | None = None


@pytest.fixture(scope="module", autouse=True)
def _close_the_command_server():
    yield
    global _SERVER
    if _SERVER is not None:
        _SERVER.close()
        _SERVER = None


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root, as a user types it: a tool through the command
    server, ``-c`` probes and ``fresh`` runs (what a tool prints while importing is checked) in a
    fresh interpreter."""
    global _SERVER
    if args[0].startswith("tools/") and not fresh:
        _SERVER = _SERVER or CommandServer()
        return _SERVER.run(["python", *args], REPO_ROOT, user_environment(**(env or {})), timeout=timeout)
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=user_environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    """The command failed with exactly ``Error: <message...>`` and the hint, no traceback."""
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr, done.stderr[-3000:]
    error, hint = done.stderr.strip().split("\n")[-2:]
    assert error.startswith(f"Error: {message}"), done.stderr[-3000:]
    assert hint == HINT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny classifier checkpoint (3 classes, 32 px), an image, and a copy of the checkpoint cut short."""
    folder = tmp_path_factory.mktemp("messages")
    torch.manual_seed(0)
    model = mobilenet_v2(num_classes=3, width_mult=0.35)
    checkpoint = save_model(
        folder / "tiny.ckpt", model, describe("classification", model, {"image_size": 32}, class_names=["a", "b", "c"])
    )
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    truncated = folder / "truncated.ckpt"
    content = checkpoint.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])  # an interrupted copy
    return {"folder": folder, "checkpoint": checkpoint, "image": image, "truncated": truncated}


# --------------------------------------------------------------------------------------------------
# 1. A full disk while a checkpoint is written


class _DiskFullAfter:
    """A file that takes ``budget`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, file, budget: int) -> None:
        self.file = file
        self.budget = budget

    def write(self, data) -> int:
        if len(data) > self.budget:
            self.file.write(bytes(data[: self.budget]))  # part of it reaches the disk
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """torch.save itself (as Lightning calls it through the checkpoint I/O) on a disk that fills:
    torch reports 'unexpected pos' with ENOSPC buried in the chain; the error names the file."""
    checkpoint_io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(1000)}}, last)
    monkeypatch.setattr(files, "open", lambda path, mode: _DiskFullAfter(open(path, mode), 2000), raising=False)
    with pytest.raises(WriteFailed) as caught:
        checkpoint_io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(1000)}}, last)
    message = str(caught.value)
    assert message.startswith(f"could not write checkpoint {last}: No space left on device (")
    assert " MB free on /" in message and message.endswith("); the previous checkpoint is intact")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert "unexpected pos" in str(caught.value.__cause__), "the cause is torch's zip-writer error"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"], "the temporary is removed"

    with pytest.raises(WriteFailed, match=r"epoch_001\.ckpt: No space left on device .*; no partial file was left"):
        checkpoint_io.save_checkpoint(
            {"epoch": 2, "state_dict": {"w": torch.zeros(1000)}}, last.parent / "epoch_001.ckpt"
        )
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_other_writes_name_their_file_and_its_kind(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(WriteFailed, match=r"could not write JSON file .*a_file/metrics\.json: .*; no partial file"):
        files.atomic_write_text(blocker / "metrics.json", "{}")


# --------------------------------------------------------------------------------------------------
# 2. A truncated checkpoint


def test_a_truncated_checkpoint_is_called_truncated(tiny):
    done = run("tools/predict.py", f"ckpt_path={tiny['truncated']}", f"input={tiny['image']}", f"hydra.run.dir={tiny['folder'] / 'p1'}")  # fmt: skip
    assert_one_line_error(done, f"not a checkpoint of this project: {tiny['truncated']}: the file is truncated (")
    assert (
        "it starts like a PyTorch zip archive but its end is missing (the copy or the write did not finish)"
        in done.stderr
    )


def test_a_zip_that_torch_did_not_write_is_not_called_truncated(tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as writing:
        writing.writestr("a.txt", "hello")
    with pytest.raises(UnreadableFile, match=r"a zip archive, but not one torch\.save writes"):
        load_torch_file(archive)


# --------------------------------------------------------------------------------------------------
# 3 and 4. ExecuTorch programs: a description of another program, a failing input, the runtime's noise


@pytest.fixture(scope="module")
def program(tiny):
    """The tiny classifier as an ExecuTorch program with its description, and a program of another
    network (a 1x1 convolution on 8 x 8 images)."""
    pytest.importorskip("executorch", reason="ExecuTorch programs need the optional extra: pip install '.[mobile]'")
    import vision_mnv2
    from vision_mnv2.executorch_export import write_executorch

    pte = vision_mnv2.load(tiny["checkpoint"]).export_executorch(tiny["folder"] / "tiny.pte")
    other = write_executorch(torch.nn.Conv2d(3, 2, 1), tiny["folder"] / "conv.pte", torch.rand(1, 3, 8, 8), {})
    return {"pte": pte, "other": other}


@pytest.mark.programs
def test_predicting_with_a_program_prints_none_of_the_runtimes_noise(program, tiny):
    # A fresh interpreter: torch's notice about torchao's enums is printed while importing.
    done = run("tools/predict.py", f"ckpt_path={program['pte']}", f"input={tiny['image']}", f"hydra.run.dir={tiny['folder'] / 'p2'}", fresh=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "predictions for 1 image(s)" in output
    assert "cpuinfo_utils.cpp" not in output and "threadpool.cpp" not in output
    assert "register_constant" not in output, "torch's notice about torchao's enums"


def test_the_runtimes_other_lines_are_passed_on(capfd):
    from vision_mnv2.pipelines.runners import _RuntimeLog

    with _RuntimeLog().capture():
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n")
        os.write(2, b"[method.cpp:99] something worth reading\n")
    assert capfd.readouterr().err == "[method.cpp:99] something worth reading\n"


@pytest.mark.programs
def test_a_description_of_another_program_is_refused(program, tiny):
    from vision_mnv2.executorch_export import sidecar_path

    swapped = tiny["folder"] / "swapped.pte"
    shutil.copy(program["other"], swapped)
    shutil.copy(sidecar_path(program["pte"]), sidecar_path(swapped))
    done = run("tools/predict.py", f"ckpt_path={swapped}", f"input={tiny['image']}", f"hydra.run.dir={tiny['folder'] / 'p3'}")  # fmt: skip
    assert_one_line_error(
        done, f"{sidecar_path(swapped)} describes another program than {swapped}: it was written with tiny.pte"
    )
    assert "Export again" in done.stderr


@pytest.mark.programs
def test_an_older_description_is_taken_and_a_failing_input_is_named(program, tiny):
    """A description written before programs were identified is not checked; the runtime's failure on
    the image (this program takes 8 x 8) then names the file, the shape and the runtime's reason."""
    from vision_mnv2.executorch_export import sidecar_path

    older = tiny["folder"] / "older.pte"
    shutil.copy(program["other"], older)
    description = json.loads(sidecar_path(program["pte"]).read_text())
    del description["program"]
    sidecar_path(older).write_text(json.dumps(description))
    done = run("tools/predict.py", f"ckpt_path={older}", f"input={tiny['image']}", f"hydra.run.dir={tiny['folder'] / 'p4'}")  # fmt: skip
    assert_one_line_error(done, f"{older}: the program failed on an input of shape [1, 3, 32, 32]: Attempted to resize")
    assert "error 0x10" in done.stderr


# --------------------------------------------------------------------------------------------------
# 5 and 7. A training run prints each Lightning line once; quantize reports the images it used


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tools/train.py on 12 training images, one step: its output and its run folder."""
    folder = tmp_path_factory.mktemp("trained")
    root = write_classification_dataset(
        folder / "data", num_classes=3, train_per_class=4, val_per_class=2, image_size=32
    )
    run_dir = folder / "run"
    done = run(
        "tools/train.py", "task=classification", f"data.root={root}", "data.generate=null", "data.num_classes=3",
        "data.image_size=32", "data.batch_size=4", "data.num_workers=0", "backbone.width_mult=0.35",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
        "+trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "callbacks.model_summary=null",
        "logger=none", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {"done": done, "run_dir": run_dir, "checkpoint": run_dir / "checkpoints" / "last.ckpt"}


def test_each_lightning_line_appears_once(trained):
    output = (trained["done"].stdout + trained["done"].stderr).splitlines()
    assert not [line for line in output if line.startswith("INFO: ")], "Lightning's own console handler"
    for text in ("Seed set to 42", "GPU available: False", "`Trainer.fit` stopped"):
        assert sum(text in line for line in output) == 1, (text, output)
    # ... through Hydra's logging, which also writes them into the run's log file
    assert "`Trainer.fit` stopped" in (trained["run_dir"] / "train.log").read_text()


def test_quantize_reports_the_calibration_images_it_used(trained, tmp_path):
    done = run(
        "tools/quantize.py", f"ckpt_path={trained['checkpoint']}", "quantize.iters=2", "quantize.repeats=1",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "quantize.md").read_text()
    assert "Calibration: 12 training images (the whole training split; quantize.calibration_images=256)" in report


# --------------------------------------------------------------------------------------------------
# 6. Segmentation with batches of one image


def test_segmentation_with_batch_size_one_is_refused_before_training(tmp_path):
    root = write_segmentation_dataset(
        tmp_path / "voc", num_classes=2, train_images=2, val_images=2, image_size=(64, 64)
    )
    done = run(
        "tools/train.py", "task=deeplabv3", f"data.root={root}", "data.generate=null", "data.num_classes=3",
        "data.image_size=64", "data.batch_size=1", "data.num_workers=0", "backbone.width_mult=0.35",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "+trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null", "callbacks.model_summary=null", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert_one_line_error(done, "data.batch_size=1: segmentation cannot train on batches of one image.")
    assert "Use data.batch_size=2 or more (per process under DDP" in done.stderr
    assert "Expected more than 1 value per channel" not in done.stderr


def test_one_image_per_process_trains_when_batch_norm_spans_the_processes():
    check_training_batch_size(2)
    check_training_batch_size(1, processes_normalised_together=2)  # trainer.sync_batchnorm=true, 2 processes
    with pytest.raises(ValueError, match="data.batch_size=1"):
        check_training_batch_size(1)


# --------------------------------------------------------------------------------------------------
# 8. --help lists the config groups the tool reads, without loading torch

HELP_PROBE = textwrap.dedent(
    """
    import json, runpy, sys
    for tool in sys.argv[1:]:
        sys.argv = [f"tools/{tool}.py", "--help"]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit:
            pass
    print(json.dumps({"torch": "torch" in sys.modules}))
    """
)


def test_help_lists_only_the_groups_each_tool_reads():
    groups = {
        "predict": ["task"],
        "export": ["task"],
        "eval": ["task", "data", "trainer"],
        "quantize": ["task", "data"],
        "benchmark": ["task", "backbone", "head", "data"],
    }
    done = run("-c", HELP_PROBE, *groups, "train")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == '{"torch": false}', "--help must not load torch"
    pages = done.stdout.split(
        "Every config value can be overridden (key=value); `--cfg job` prints the whole composed configuration."
    )
    for (tool, expected), page in zip(groups.items(), pages):
        assert page.strip().startswith(f"tools/{tool}.py:"), page[:200]
        listed = page.split("Config groups this tool reads (group=option):\n", 1)[1].strip().splitlines()
        listed = [line for line in listed if ": " in line and not line.startswith("(")]
        assert [line.split(":")[0] for line in listed] == expected, (tool, listed)
        for line in listed:
            group, options = line.split(": ")
            assert options.split(", ") == sorted(p.stem for p in (REPO_ROOT / "configs" / group).glob("*.yaml"))
    train = pages[len(groups)]
    assert "optimizer: " in train and "scheduler: " in train and "experiment: " in train


# --------------------------------------------------------------------------------------------------
# 9. Errors about the input are one line; HYDRA_FULL_ERROR=1 shows the traceback; bugs keep theirs


def test_a_missing_checkpoint_is_one_line_and_the_traceback_is_there_on_request(tiny):
    missing = tiny["folder"] / "missing.ckpt"
    args = (
        "tools/predict.py",
        f"ckpt_path={missing}",
        f"input={tiny['image']}",
        f"hydra.run.dir={tiny['folder'] / 'p5'}",
    )
    done = run(*args)
    assert_one_line_error(done, f"checkpoint file '{missing}' does not exist")
    assert done.stderr.strip().count("\n") == 1, "nothing but the message and the hint"
    assert f"checkpoint file '{missing}' does not exist" in (tiny["folder"] / "p5" / "predict.log").read_text()

    full = run(*args, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1
    assert "Traceback (most recent call last)" in full.stderr and "CheckpointError: checkpoint file" in full.stderr


def test_a_bad_override_value_is_one_line(tiny):
    done = run("tools/export.py", f"ckpt_path={tiny['checkpoint']}", "export.format=tflite", f"hydra.run.dir={tiny['folder'] / 'e1'}")  # fmt: skip
    assert_one_line_error(done, "export.format must be one of ['executorch', 'onnx'], got 'tflite'")
    # an override of a key no config has: Hydra's own message, in the same form
    done = run("tools/predict.py", f"ckpt_path={tiny['checkpoint']}", f"input={tiny['image']}", "nosuch.key=1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Error: Could not override 'nosuch.key'." in done.stderr and done.stderr.strip().endswith(HINT)


def test_argparse_tools_report_the_same_way(tmp_path):
    done = run("tools/voc_to_coco.py", "--annotations", str(tmp_path / "none"), "--images", str(tmp_path), "--output", str(tmp_path / "x.json"))  # fmt: skip
    assert_one_line_error(done, f"folder '{tmp_path / 'none'}' does not exist")


def test_ctrl_c_is_one_line(tiny, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(400):
        shutil.copy(tiny["image"], photos / f"{index:03d}.png")
    process = subprocess.Popen(
        [
            sys.executable,
            "tools/predict.py",
            f"ckpt_path={tiny['checkpoint']}",
            f"input={photos}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],  # fmt: skip
        cwd=REPO_ROOT,
        env=user_environment(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a user's terminal has it: a shell without job control starts background commands (a CI
        # script's `... &`) with SIGINT ignored, and the child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in process.stdout:  # the first prediction: it is busy predicting
            if "000.png:" in line:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted", stderr[-3000:]
    assert "Traceback" not in stderr


BUG_PROBE = textwrap.dedent(
    """
    from tasks.cli import run_tool

    def main():
        raise TypeError("a bug in the tool")

    run_tool(main)
    """
)


def test_a_bug_keeps_its_traceback():
    done = run("-c", BUG_PROBE)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "TypeError: a bug in the tool" in done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("Error: ")]


def test_which_errors_are_the_users():
    from hydra.errors import InstantiationException

    message = cli.user_error_message
    assert message(ValueError("data.check_images must be one of ...")) == "data.check_images must be one of ..."
    assert (
        message(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.png"))
        == "x.png: No such file or directory"
    )
    assert message(PermissionError(errno.EACCES, "Permission denied", "/data")) == "/data: Permission denied"
    assert message(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert "pip install" in message(ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"))
    assert message(ModuleNotFoundError("No module named 'vision_mnv2.nothing'", name="vision_mnv2.nothing")) is None
    assert message(MemoryError()).startswith("out of memory")
    wrapped = InstantiationException("Error in call to target 'tasks.datamodules.X':\nValueError('bad')")
    wrapped.__cause__ = ValueError("data.root '/x' does not exist")
    assert message(wrapped) == "data.root '/x' does not exist"
    wrapped.__cause__ = TypeError("unexpected keyword argument")
    assert message(wrapped) is None
    for bug in (TypeError("x"), AttributeError("x"), KeyError("x"), RuntimeError("x")):
        assert message(bug) is None
