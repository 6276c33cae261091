"""The documentation is the test plan: every command of the ``bash`` blocks of README.md and docs/*.md
and every ``python`` block runs here through the real command line, in reading order, in a fresh home
with tiny data in the layouts the pages name (tests/readme_world.py), with the task's default configs
and only size overrides. A command added to a page is a new case here, so a documented command that
no test runs cannot exist.

Commands with ``ckpt_path=...`` run once per task, on the checkpoint the documentation's own training
command of that task wrote; ``[...]`` parts run both without and with them. Each case checks what the
command promises: exit status 0, no traceback, and the files and output the pages say it writes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from vision_mnv2.checkpoint import read_checkpoint

from .command_server import CommandServer
from .helpers import top2_gaps
from .readme_world import (
    REPO_ROOT,
    TASK_RUNS,
    Command,
    UserWorld,
    documentation,
    expanded_commands,
    readme_snippets,
    same_work,
)

COMMANDS = expanded_commands()
SNIPPETS = readme_snippets()
TOOLS = {p.as_posix() for p in (REPO_ROOT / "tools").glob("*.py")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    server = CommandServer()
    try:
        yield UserWorld(tmp_path_factory.mktemp("readme"), server)
    finally:
        server.close()


def test_the_readme_has_the_commands_a_user_needs():
    """The parser finds what the documentation promises (a regression in parsing would silently test less)."""
    tools = {c.tool for c in COMMANDS}
    for needed in ("tools/train.py", "tools/eval.py", "tools/predict.py", "tools/export.py", "tools/quantize.py",
                   "tools/benchmark.py", "tools/convert.py", "tools/plot.py", "tools/voc_to_coco.py", "make train"):  # fmt: skip
        assert needed in tools, f"no documented command runs {needed}"
    for command in COMMANDS:
        assert command.words[0] in ("python", "make"), (
            f"{command.source}:{command.line}: not a command this test can run"
        )
        if command.words[0] == "python":
            assert str(REPO_ROOT / command.words[1]) in TOOLS, f"{command.source}:{command.line}: no such tool"
    exported = {
        (dict(w.split("=", 1) for w in same_work(c) if "=" in w)["ckpt_path"], c.value("export.quantize"))
        for c in COMMANDS
        if c.value("export.format") == "executorch"
    }
    assert exported >= {(f"<{task}>", quantize) for task in TASK_RUNS for quantize in (None, "int8")}, (
        "ExecuTorch export, float32 and int8, for every task"
    )


def test_make_test_is_the_test_command():
    """`make test` cannot run inside its own suite: its recipe is checked to be this suite, installing first."""
    done = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert 'pip install -e ".[dev]"' in done.stdout and "-m pytest" in done.stdout


# Groups that run on test workers at once (pytest-xdist's loadgroup), each in a world of its own
# that makes what its commands need: deployment (exports, quantize, benchmark, converted models),
# everything else, and (marked ``programs``, CI's second stage) the ExecuTorch programs in two.
DEPLOY_TOOLS = ("tools/export.py", "tools/quantize.py", "tools/benchmark.py", "tools/convert.py")


def _half(command: Command) -> str:
    if _makes_or_runs_a_program(command):
        # Two worlds, so that two workers share the lowerings: detection's and classification's
        # int8 programs (with the converted model's) in one, segmentation's and the float ones in the other.
        int8 = command.value("export.quantize") == "int8" and command.task != "segmentation"
        return "readme-programs-int8" if int8 or ".pte" in command.text else "readme-programs"
    deploy = command.tool in DEPLOY_TOOLS or "mnv2.ckpt" in command.text
    return "readme-deploy" if deploy else "readme"


def _makes_or_runs_a_program(command: Command) -> bool:
    """ExecuTorch exports (and what runs their programs): marked ``programs``, CI's second stage."""
    return command.value("export.format") == "executorch" or ".pte" in command.text


def _marks(command: Command) -> list:
    marks = [pytest.mark.xdist_group(_half(command))]
    return marks + [pytest.mark.programs] if _makes_or_runs_a_program(command) else marks


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=_marks(c)) for c in COMMANDS if c.words[:2] != ["make", "test"]],
    ids=lambda c: c.id,
)
def test_readme_command(world, command: Command):
    earlier = COMMANDS[: COMMANDS.index(command)]
    outcome = world.run(command, earlier)
    assert outcome.returncode == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    _check_what_it_promises(world, command, outcome)


def _run_folder(outcome) -> Path:
    folders = [p for p in outcome.new_outputs if p.is_dir()]
    assert len(folders) == 1, f"expected one new run folder, got {folders}\n{outcome.describe()}"
    return folders[0]


def _check_what_it_promises(world: UserWorld, command: Command, outcome) -> None:
    tool = command.tool
    if tool in ("tools/train.py", "make train"):
        if "sweep" in command.text:
            [multirun] = [p for p in outcome.new_outputs if p.parent.name == "multirun"]
            runs = sorted(p for p in multirun.iterdir() if p.is_dir())
            assert len(runs) >= 3 and all((r / "train_metrics.json").is_file() for r in runs), runs
            return
        run = _run_folder(outcome) if tool != "make train" else world.cwd / "outputs/ssdlite/make_train"
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra" / "config.yaml").is_file()
        metrics = json.loads((run / "train_metrics.json").read_text())
        assert metrics["last_checkpoint"] and metrics["wall_time_s"] > 0
        assert "Training done: " in outcome.stdout + outcome.stderr, "the run ends with its summary line"
        if command.value("trainer.max_steps"):  # a budget (the world's is 2 steps): that many, then a checkpoint
            assert metrics["steps"] == metrics["step_budget"] == 2, metrics
            assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 2
    elif tool == "tools/eval.py":
        text = (_run_folder(outcome) / "metrics.json").read_text()
        written = json.loads(text, parse_constant=lambda token: pytest.fail(f"metrics.json holds {token}: not JSON"))
        assert written["metrics"] and all(np.isfinite(v) for k, v in written["metrics"].items() if "/IoU/" not in k)
        # A class in neither the ground truth nor the predictions has no IoU: null, not a number.
        assert all(v is None or np.isfinite(v) for v in written["metrics"].values())
        first = next(iter(written["metrics"]))
        assert first in outcome.stdout, "the metrics are printed"
    elif tool == "tools/predict.py":
        _check_predictions(world, command, _run_folder(outcome))
    elif tool == "tools/export.py":
        run = _run_folder(outcome)
        if command.value("export.format") == "executorch":
            [program] = list(run.glob("*.pte"))
            description = json.loads(program.with_name(program.name + ".json").read_text())
            assert description["executorch"]["precision"] == ("int8" if command.value("export.quantize") else "float32")
            if command.value("export.quantize"):
                _int8_near_the_checkpoint(world, outcome, program)
            else:
                _same_outputs_as_the_checkpoint(world, outcome, program)
        else:
            [graph] = list(run.glob("*.onnx"))
            props = {p.key: p.value for p in onnx.load(str(graph)).metadata_props}
            assert props["task"] in TASK_RUNS and json.loads(props["class_names"])
    elif tool == "tools/quantize.py":
        report = (_run_folder(outcome) / "quantize.md").read_text()
        assert "| fp32 |" in report and "| int8 |" in report
    elif tool == "tools/benchmark.py":
        assert (_run_folder(outcome) / "benchmark.md").is_file()
    elif tool == "tools/convert.py":
        output = world.cwd / command.words[command.words.index("--output") + 1]
        _, meta = read_checkpoint(output)
        assert meta.builder and meta.class_names and meta.preprocessing
    elif tool == "tools/plot.py":
        out = world.cwd / command.words[command.words.index("--out") + 1]
        with Image.open(out) as figure:
            assert figure.size[0] > 300 and figure.size[1] > 200
    elif tool == "tools/voc_to_coco.py":
        ran = outcome.command  # the user's folder names are the world's (mine -> mine_detection)
        coco = json.loads((world.cwd / ran[ran.index("--output") + 1]).read_text())
        assert coco["images"] and coco["annotations"] and coco["categories"]
    else:
        pytest.fail(f"{command.source}:{command.line}: no check for {tool}; say here what it promises")


def _program_and_checkpoint_outputs(world: UserWorld, outcome, program: Path):
    """For each of the world's photos (of several sizes: a program takes any size), prepared by the
    program's pipeline: the photo, the program's raw outputs and those of the checkpoint it was
    exported from (the detection program has no NMS)."""
    import vision_mnv2
    from vision_mnv2.data import read_rgb

    checkpoint = world.cwd / next(w.split("=", 1)[1] for w in outcome.command if w.startswith("ckpt_path="))
    exported, original = vision_mnv2.load(program), vision_mnv2.load(checkpoint)
    network = original.export_module(**exported.export_options)
    for photo in sorted((world.cwd / "photos").glob("*.jpg")):
        tensor, _ = exported.preprocess(read_rgb(photo))
        theirs = exported.run(tensor[None])
        with torch.no_grad():
            ours = network(tensor[None])
        ours = ours if isinstance(ours, tuple) else (ours,)
        assert len(theirs) == len(ours), program.name
        yield photo, theirs, ours


def _same_outputs_as_the_checkpoint(world: UserWorld, outcome, program: Path) -> None:
    """A float32 program computes what the checkpoint's network computes (ExecuTorch's XNNPACK
    kernels differ from PyTorch's in float rounding only)."""
    for _, theirs, ours in _program_and_checkpoint_outputs(world, outcome, program):
        for a, b in zip(theirs, ours):
            if b.is_floating_point():
                torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def _int8_near_the_checkpoint(world: UserWorld, outcome, program: Path) -> None:
    """An int8 program computes what the checkpoint's float network computes, to int8's precision,
    and decides as it does wherever the float network's decision is clear of that error."""
    for photo, int8_outputs, float_outputs in _program_and_checkpoint_outputs(world, outcome, program):
        for theirs, ours in zip(int8_outputs, float_outputs):
            if not ours.is_floating_point():
                continue
            # Measured on the programs these commands write: int8's error 0.3-5% of the outputs'
            # size (relative L2: logits, boxes in pixels, scores). 15% leaves three times that; a
            # broken scale or a lost layer gives errors of the outputs' own size (100%).
            relative = float((theirs - ours).norm() / ours.norm().clamp_min(1e-12))
            assert relative <= 0.15, (program.name, photo.name, relative)
        if len(float_outputs) == 1:  # class scores (classification) or per-pixel ones (segmentation)
            (theirs,), (ours,) = int8_outputs, float_outputs
            decided = top2_gaps(ours) > 2 * (theirs - ours).abs().max()  # no such error reorders the two best
            assert torch.equal(theirs.argmax(1)[decided], ours.argmax(1)[decided]), (program.name, photo.name)


def _input_images(world: UserWorld, words: list[str]) -> list[Path]:
    source = Path(next(w.split("=", 1)[1] for w in words if w.startswith("input=")))
    source = source if source.is_absolute() else world.cwd / source
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if source.suffix == ".json":
        return [Path(i["file_name"]) for i in json.loads(source.read_text())["images"]]
    if source.suffix == ".txt":
        return [Path(line) for line in source.read_text().split()]
    return [source]


def _check_predictions(world: UserWorld, command: Command, run: Path) -> None:
    outcome = world.done[command.id]
    predictions = json.loads((run / "predictions.json").read_text())
    index = json.loads((run / "images.json").read_text())
    expected = _input_images(world, outcome.command)
    assert len(index) == len(expected), "one entry per input image"
    for entry in index:
        if entry["file_name"].endswith((".jpg", ".png", ".jpeg", ".bmp")):
            with Image.open(world.cwd / entry["file_name"]) as photo:
                assert (entry["width"], entry["height"]) == photo.size
    if predictions and "mask" in predictions[0]:  # segmentation: one mask per photo, at the photo's size
        for record, entry in zip(predictions, index):
            with Image.open(run / record["mask"]) as mask:
                assert mask.size == (entry["width"], entry["height"])
    elif predictions and "bbox" in predictions[0]:  # detection: COCO results in the photos' pixels
        sizes = {e["id"]: (e["width"], e["height"]) for e in index}
        for record in predictions:
            x, y, w, h = record["bbox"]
            width, height = sizes[record["image_id"]]
            assert -0.5 <= x and -0.5 <= y and x + w <= width + 0.5 and y + h <= height + 0.5
    else:
        assert len(predictions) == len(expected) and all("top5" in p for p in predictions)


def _snippet_half(snippet) -> str:
    return "readme-deploy" if Path(snippet.source).stem in ("deployment", "google-models") else "readme"


def _commands_before(snippet) -> list[Command]:
    """The commands above a python block, in reading order."""
    pages = [p.relative_to(REPO_ROOT).as_posix() for p in documentation()]
    where = (pages.index(snippet.source), snippet.line)
    return [c for c in COMMANDS if (pages.index(c.source), c.line) < where]


def _run_block(world: UserWorld, snippet):
    """Run a python block in the world (once): the blocks above it on its page first, since a block
    may open what an earlier one wrote (``detector.onnx``), as a reader running the page in order
    has it. So the outcome does not depend on which worker ran which block before."""
    if snippet.id in world.blocks_done:
        return world.blocks_done[snippet.id]
    for earlier in SNIPPETS:
        if earlier.source == snippet.source and earlier.line < snippet.line:
            _, done = _run_block(world, earlier)
            assert done.returncode == 0, f"{earlier.id}, run before {snippet.id}, failed:\n{done.stderr[-4000:]}"
    code = snippet.code
    for placeholder in sorted(set(re.findall(r"[\w./-]*<run>[\w./-]*", code))):
        command = Command(snippet.line, placeholder, ["python", "x", f"path={placeholder}"])
        resolved = world._produced(placeholder, command, _commands_before(snippet))
        code = code.replace(placeholder, resolved)
    script = world.cwd / f"readme_block_{Path(snippet.source).stem}_{snippet.line}.py"
    script.write_text(code)
    done = world.server.run(["python", script.name], world.cwd, world.env)
    world.blocks_done[snippet.id] = code, done
    return code, done


@pytest.mark.parametrize(
    "snippet", [pytest.param(s, marks=pytest.mark.xdist_group(_snippet_half(s))) for s in SNIPPETS], ids=lambda s: s.id
)
def test_readme_python_block(world, snippet):
    """The README's Python examples run as written, with its paths filled in like the commands'."""
    code, done = _run_block(world, snippet)
    files = sorted(p.name for p in world.cwd.iterdir())
    assert done.returncode == 0, f"{code}\n--- stderr\n{done.stderr[-4000:]}\n--- in {world.cwd}: {files}"


def test_readme_world_is_shell_quotable():
    """The ids shown for the cases are the commands as a user would paste them."""
    for command in COMMANDS:
        assert shlex.split(command.text) == command.words


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_of_the_documentation_leads_somewhere():
    for page in documentation():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
            if "://" in target:
                continue
            linked = (page.parent / target) if target else page
            assert linked.exists(), f"{page.name}: the link to {target} leads nowhere"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.+)$", linked.read_text())
                assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor} in {target}"
