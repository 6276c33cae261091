"""Markdown reports of measurements, all in one form, and where they go.

Every report starts the same way (:func:`report_header`): a title, the command that made it, the
machine it ran on (architecture, cores, load, package versions, date) and what was measured how;
its tables follow. :func:`publish` prints it, writes it as the run's own file when there is one,
and replaces its named section of the project's docs/BENCHMARKS.md only when asked (the
``--update-docs`` of :func:`argument_parser`, or ``benchmark.update_docs`` / ``quantize.update_docs``
of the Hydra tools): the recorded numbers change on purpose, never as a side effect of a run.
Imports nothing heavy, so that a benchmark's ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DOCS",
    "argument_parser",
    "command_line",
    "machine",
    "mean_spread",
    "publish",
    "recipes_argument_parser",
    "recipes_table",
    "report_header",
    "write_report",
    "write_section",
]

# The project's recorded measurements, relative to the repository root (where the tools are run).
DOCS = "docs/BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEach section is written by the command it names; running it again replaces the section.\n"


def command_line(script: str | os.PathLike, argv: Sequence[str] | None = None) -> str:
    """``python tools/<...>/<script> <arguments>`` as typed: ``script`` is the tool's file (its
    ``__file__``), named from its ``tools/`` folder; ``argv`` defaults to the command line's own
    arguments. Hydra's ``hydra.*`` arguments (where a run writes) are left out."""
    parts = Path(script).absolute().parts
    shown = "/".join(parts[len(parts) - 1 - parts[::-1].index("tools") :]) if "tools" in parts else Path(script).name
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", shown, *(shlex.quote(a) for a in args if not a.startswith("hydra."))])


def _versions(packages: Sequence[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    found = []
    for name in packages:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def machine(*details: str, packages: Sequence[str] = ("torch",)) -> str:
    """What a measurement ran on: ``x86_64, 2 CPU cores, load average 1.2 at the end, <details>;
    torch 2.x; <date>``. The load average says how busy a shared machine was (neighbours move
    single figures; ratios of things measured side by side much less)."""
    head = [platform.machine() or "unknown machine", f"{os.cpu_count()} CPU cores"]
    if hasattr(os, "getloadavg"):
        head.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    parts = [", ".join([*head, *details])]
    if packages:
        parts.append(_versions(packages))
    parts.append(time.strftime("%Y-%m-%d"))
    return "; ".join(parts)


def report_header(
    title: str, command: str, setup: str, *details: str, packages: Sequence[str] = ("torch",)
) -> list[str]:
    """The lines every report starts with, up to its first table: the title (a ``###`` heading),
    the command, and the machine (:func:`machine` with ``details`` such as thread counts) followed by
    ``setup``, what was measured and how."""
    return [
        f"### {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine(*details, packages=packages)}. {setup}",
        "",
    ]


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """The command line of a measurement: ``description`` (its module's docstring) as the help text,
    and ``--update-docs`` / ``--docs``, which every measurement takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-docs", action="store_true", help="also replace this measurement's section of --docs")
    parser.add_argument("--docs", default=DOCS, help="the recorded measurements (default: %(default)s)")
    return parser


def publish(
    text: str,
    section: str,
    *,
    update_docs: bool = False,
    docs: str | os.PathLike = DOCS,
    report_file: str | os.PathLike | None = None,
) -> str:
    """Print a report, write it to ``report_file`` (a run's own report) when given, and replace the
    section ``section`` of ``docs`` when ``update_docs``. Returns the text."""
    print(text)
    if report_file is not None:
        print(f"report written to {write_report(report_file, text)}")
    if update_docs:
        write_section(docs, section, text)
        print(f"section {section!r} of {docs} replaced")
    return text


def write_report(path: str | os.PathLike, text: str) -> Path:
    """A measurement's report as its own file (a run folder's ``benchmark.md``, ...)."""
    from .files import atomic_write_text  # noqa: PLC0415  (it loads torch)

    path = Path(path)
    atomic_write_text(path, text)
    return path


def write_section(path: str | os.PathLike, name: str, text: str) -> Path:
    """Replace the section ``name`` of a Markdown file (between ``<!-- benchmark:name -->`` markers),
    or append it; the file is rewritten atomically."""
    from .files import atomic_write_text  # noqa: PLC0415  (it loads torch)

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


def mean_spread(values: Sequence[float]) -> str:
    """Scores over seeds: one, as it is; several, "mean ± standard deviation (lowest-highest)"."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def score_measured(recipe: str, seed: int, score: float) -> float:
    """Print one recipe's score of one seed as it is measured (a comparison runs for hours), and
    return it."""
    print(f"seed {seed}, {recipe}: {score:.4f}", flush=True)
    return score


def recipes_argument_parser(description: str | None, steps: int = 150) -> argparse.ArgumentParser:
    """The command line of a recipe comparison: :func:`argument_parser`'s, and the budget in steps,
    the seeds and variants of the preset."""
    parser = argument_parser(description)
    parser.add_argument("--steps", type=int, default=steps, help="training steps of every recipe")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per recipe (mean and spread)")
    parser.add_argument(
        "--preset-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a variant of the preset (repeatable)",
    )
    return parser


def recipes_report(
    title: str, command: str, setup: str, rows: Sequence[tuple[str, Sequence[float], float]], metric: str
) -> str:
    """A recipe comparison's whole report: the header (with the torch threads the recipes trained
    on) and :func:`recipes_table`."""
    import torch  # noqa: PLC0415  (the tools' --help must not wait for it)

    lines = report_header(title, command, setup, f"{torch.get_num_threads()} threads")
    return "\n".join([*lines, *recipes_table(rows, metric)]) + "\n"


def recipes_table(rows: Sequence[tuple[str, Sequence[float], float]], metric: str) -> list[str]:
    """The table of a recipe comparison, ``rows`` = (recipe, score per seed, training seconds per
    seed) with the reference first and the preset second, and the ratio of their mean scores."""
    lines = [f"| recipe | {metric} | training time per seed, s |", "|---|---|---|"]
    lines += [f"| {name} | {mean_spread(scores)} | {seconds:.0f} |" for name, scores, seconds in rows]
    reference, preset = statistics.mean(rows[0][1]), statistics.mean(rows[1][1])
    ratio = f"**{preset / reference:.3f}x**" if reference else "n/a (the reference scored 0)"
    return [*lines, "", f"Preset / reference {metric} (means): {ratio}."]
