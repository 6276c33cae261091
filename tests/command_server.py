"""Run the project's command-line tools as a user does (``python tools/x.py args``, in a working
folder, with an environment), each in its own process, without paying Python's and PyTorch's start-up
for every command.

A server process imports the heavy libraries once and forks a child per command. The child is a
fresh process as far as the tool can tell: it gets the command's arguments in ``sys.argv``, its working
folder, its environment and its own stdout/stderr, and runs the script as ``__main__`` (what
``python tools/x.py`` does), then exits with the script's status. Nothing runs in the server but
imports, so no thread pool exists when it forks (a forked child of a process with OpenMP or
XNNPACK worker threads can hang). Set ``VISION_MNV2_FRESH_PROCESSES=1`` to start a new interpreter
per command instead (the same results, a few seconds slower per command).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Imported before forking: everything the tools load that is slow to import and safe to fork after
# (pure Python and torch before any kernel ran). ExecuTorch's runtime bindings are left out: they
# may start a thread pool.
WARM_IMPORTS = (
    "torch",
    "torchvision",
    "lightning",
    "hydra",
    "omegaconf",
    "albumentations",
    "onnx",
    "onnxruntime",
    "pycocotools.coco",
    "faster_coco_eval",
    "torchmetrics",
    "matplotlib.pyplot",
    "executorch.exir",
    "tasks.runner",
    "tasks.inference",
    "tasks.quantize",
    "tools.benchmarks.against_torchvision",
    "vision_mnv2.pipelines",
    "vision_mnv2.convert.tflite_checkpoint",
)


@dataclass
class Completed:
    """What ``subprocess.run(..., capture_output=True, text=True)`` returns, for one command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _child(request: dict) -> None:
    """In the forked child: become ``python <argv...>`` in the request's folder and environment."""
    os.setpgrp()  # its own process group, so that a timeout kills what it started too
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stdin = open(os.devnull)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if os.environ.get("OMP_NUM_THREADS"):  # read by torch at import, which happened in the server
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    script = request["argv"][1]
    sys.argv = request["argv"][1:]
    sys.path[0] = str(Path(script).resolve().parent)  # what `python script.py` puts first
    code = 0
    try:
        import runpy

        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        if isinstance(exit_.code, int):
            code = exit_.code
        elif exit_.code is not None:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """The server loop: one JSON request per line on stdin; answers ``{"pid": ...}`` when the child
    starts and ``{"returncode": ...}`` when it ends."""
    import importlib

    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional extra that is not installed: the tool reports it itself
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


class CommandServer:
    """Runs ``python <script> <args>`` command lines; see the module's docstring."""

    def __init__(self, fresh: bool | None = None) -> None:
        self.fresh = os.environ.get("VISION_MNV2_FRESH_PROCESSES") == "1" if fresh is None else fresh
        self.process: subprocess.Popen | None = None
        self.logs = Path(tempfile.mkdtemp(prefix="command_server_"))
        self.count = 0

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from tests.command_server import serve; serve()"],
                cwd=Path(__file__).resolve().parents[1],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            self._read(timeout=300)  # {"ready": true}
        return self.process

    def _read(self, timeout: float | None) -> dict | None:
        stream = self.process.stdout
        ready, _, _ = select.select([stream], [], [], timeout)
        if not ready:
            return None
        line = stream.readline()
        if not line:
            raise RuntimeError("the command server ended unexpectedly")
        return json.loads(line)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> Completed:
        """Run ``argv`` (``["python", "tools/x.py", ...]``) in ``cwd`` with the environment ``env``."""
        if argv[0] != "python":
            raise ValueError(f"not a python command line: {argv}")
        started = time.perf_counter()
        if self.fresh:
            done = subprocess.run(
                [sys.executable, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
            )
            return Completed(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - started)
        self.count += 1
        stdout, stderr = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        process = self._start()
        request = {"argv": argv, "cwd": str(cwd), "env": dict(env), "stdout": str(stdout), "stderr": str(stderr)}
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        pid = self._read(timeout=60)["pid"]
        reply = self._read(timeout=timeout)
        if reply is None:
            os.killpg(pid, signal.SIGKILL)
            self._read(timeout=60)  # the server's answer for the killed child
            raise subprocess.TimeoutExpired(argv, timeout, output=stdout.read_text(), stderr=stderr.read_text())
        code = reply["returncode"]
        return Completed(argv, code, stdout.read_text(), stderr.read_text(), time.perf_counter() - started)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
