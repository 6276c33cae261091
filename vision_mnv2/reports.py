"""Markdown reports of measurements: a run's own report file, and named sections of the project's
docs/BENCHMARKS.md that a measurement replaces when it is run again on purpose."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from .files import atomic_write_text

__all__ = ["command_line", "write_report", "write_section"]

HEADER = "# Benchmarks\n\nEach section is written by the command it names; running it again replaces the section.\n"


def command_line(tool: str, argv: list[str] | None = None) -> str:
    """``python tools/<tool> <arguments>`` as typed (Hydra's own ``hydra.*`` arguments left out)."""
    args = sys.argv[1:] if argv is None else argv
    return f"python tools/{tool} " + " ".join(shlex.quote(a) for a in args if not a.startswith("hydra."))


def write_report(path: str | os.PathLike, text: str) -> Path:
    """A measurement's report as its own file (a run folder's ``benchmark.md``, ...)."""
    path = Path(path)
    atomic_write_text(path, text)
    return path


def write_section(path: str | os.PathLike, name: str, text: str) -> Path:
    """Replace the section ``name`` of a Markdown file (between ``<!-- benchmark:name -->`` markers),
    or append it; the file is rewritten atomically."""
    path = Path(path)
    start, end = f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"
    current = path.read_text() if path.is_file() else HEADER
    block = f"{start}\n{text}{end}"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        _, after = rest.split(end, 1)
        current = before + block + after
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, current)
    return path
