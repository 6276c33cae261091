"""What the command-line tools do around their work: how an error reaches the user, the task of a
checkpoint before Hydra composes, and the config groups each tool's ``--help`` lists. Imports
nothing heavy at the top: ``--help`` must answer without loading torch or Lightning.

Every tool in ``tools/`` runs through :func:`run_tool`. An error about the user's input (a missing
or damaged file, a bad setting, a full disk, a missing optional package) ends the command with one
line, ``Error: <message>``, a line saying how to see the traceback, and exit status 1; Ctrl+C ends it
with ``interrupted`` (status 130, as the shell reports a SIGINT). A bug keeps its traceback, and
``HYDRA_FULL_ERROR=1`` shows the traceback of every error, in every tool (Hydra's own switch).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = [
    "CONFIG_DIR",
    "TRACEBACK_SWITCH",
    "compose_config",
    "config_groups",
    "register_help_resolver",
    "run_tool",
    "traceback_requested",
    "user_error_message",
    "with_task_from_checkpoint",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Hydra's switch; here it means the same for every tool, Hydra's or not.
TRACEBACK_SWITCH = "HYDRA_FULL_ERROR"
# run_tool asks Hydra to pass errors on (HYDRA_FULL_ERROR=1) so that it can report them itself. The
# processes a tool starts (DDP ranks, benchmark runs) inherit that environment; this marks it as the
# tool's doing rather than the user's, so that they report errors in one line too.
_REPORTED_BY_TOOL = "VISION_MNV2_SHORT_ERRORS"
_HINT = f"(set {TRACEBACK_SWITCH}=1 for the traceback)"
# Top-level packages of this project: a module of theirs that cannot be imported is a bug, not a
# missing optional package.
_PROJECT_PACKAGES = {"vision_mnv2", "tasks", "tools", "tests"}
# Errors of this project's and its libraries' modules that are about the user's input, by module
# and class: looked up among the modules already imported (an error of a module that was never
# imported cannot have been raised), so this module imports none of them.
_NAMED_USER_ERRORS = (
    ("tasks.resume", "ResumeError"),  # a run that cannot be resumed
    ("vision_mnv2.models.weights", "WeightsError"),  # a weight file that does not fit the network
    ("torch", "OutOfMemoryError"),  # an accelerator's memory is too small for the settings
)


def traceback_requested() -> bool:
    """Whether the user asked for tracebacks (``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get(TRACEBACK_SWITCH) == "1" and os.environ.get(_REPORTED_BY_TOOL) != "1"


def run_tool(
    main: Callable[..., object], *, config_name: str | None = None, task_from_checkpoint: bool = False
) -> NoReturn:
    """Run a tool as its command line, and exit. ``main`` is the tool's work: with ``config_name``,
    a function of the configuration that Hydra composes from ``configs/<config_name>.yaml`` and the
    command line (run here under ``hydra.main``); without, an argparse ``main()`` returning an exit
    status. Errors are reported as the module says. ``task_from_checkpoint`` first adds the task of
    the checkpoint the command names (:func:`with_task_from_checkpoint`)."""
    full = traceback_requested()
    if not full:
        # Hydra prints a shortened traceback itself unless this is set; then it passes errors on.
        os.environ[TRACEBACK_SWITCH] = "1"
        os.environ[_REPORTED_BY_TOOL] = "1"
    try:
        if config_name is None:
            status = main()
        else:
            # Where hydra.main(config_path="../configs") in the tool would look: beside its folder.
            config_dir = Path(inspect.getfile(main)).resolve().parent.parent / "configs"
            register_help_resolver(config_dir)
            if task_from_checkpoint:
                sys.argv = with_task_from_checkpoint(sys.argv)
            status = _under_hydra(main, config_dir, config_name)()
    except KeyboardInterrupt:
        if full:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except _UserError as wrapped:
        _report(wrapped.message)
    except Exception as error:
        message = None if full else user_error_message(error)
        if message is None:
            raise  # a bug: its traceback is what helps
        _report(message)
    sys.exit(status if isinstance(status, int) else 0)


class _UserError(BaseException):
    """A user error raised by a tool's work, carried past Hydra's job runner, which catches every
    ``Exception`` and prints "Error executing job with overrides: [...]" before passing it on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _under_hydra(task: Callable[..., object], config_dir: Path, config_name: str) -> Callable[[], object]:
    import hydra  # noqa: PLC0415

    @functools.wraps(task)  # Hydra names the job (and its log file) after the unwrapped function's file
    def reported(cfg):
        try:
            return task(cfg)
        except Exception as error:
            message = None if traceback_requested() or _in_multirun() else user_error_message(error)
            if message is None:
                raise
            raise _UserError(message) from error

    return hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(reported)


def _in_multirun() -> bool:
    # A sweep goes on with its other jobs when one fails, and Hydra's line naming the failed job's
    # overrides is worth reading there; the error is reported once the sweep ends.
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415
    from hydra.types import RunMode  # noqa: PLC0415

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _report(message: str) -> NoReturn:
    _record_in_run_log(message)
    print(f"Error: {message}\n{_HINT}", file=sys.stderr)
    sys.exit(1)


def _record_in_run_log(message: str) -> None:
    """Append the error to the run's log file (Hydra's file handler), so that a run folder says why
    its run stopped; the console gets the plain line."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _imported_class(module: str, name: str) -> type | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _os_error_message(error: OSError) -> str:
    # "[Errno 2] No such file or directory: 'x'" reads better as "x: No such file or directory".
    if error.strerror and str(error).startswith("[Errno"):
        if error.filename is None:
            return error.strerror
        files = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
        return f"{files}: {error.strerror}"
    return str(error) or type(error).__name__


def user_error_message(error: BaseException) -> str | None:
    """What to tell the user about ``error`` when it is about their input (a file, a setting, the
    machine's resources, a missing optional package), else ``None``: a bug, which keeps its
    traceback."""
    instantiation = _imported_class("hydra.errors", "InstantiationException")
    if instantiation is not None and isinstance(error, instantiation):
        # Hydra wraps what a configured class raised; the class's own message is the one to show.
        if error.__cause__ is None:
            return str(error)
        return user_error_message(error.__cause__)
    compact = _imported_class("hydra.errors", "CompactHydraException")  # composition, override syntax
    omegaconf_error = _imported_class("omegaconf.errors", "OmegaConfBaseException")  # a missing or bad value
    if compact is not None and isinstance(error, compact):
        cause = error.__cause__
        if omegaconf_error is not None and isinstance(cause, omegaconf_error):
            return f"{error}\n{cause}"
        return str(error)
    if omegaconf_error is not None and isinstance(error, omegaconf_error):
        return str(error)
    if isinstance(error, MemoryError):
        return str(error) or "out of memory; lower data.batch_size or the image size"
    if isinstance(error, ImportError):
        missing = getattr(error, "name", None) or ""
        if "pip install" in str(error):  # this project's message for a missing optional extra
            return str(error)
        if isinstance(error, ModuleNotFoundError) and missing and missing.split(".")[0] not in _PROJECT_PACKAGES:
            return f"{error}: the package is not installed (pip install -e '.[dev]' installs every optional one)"
        return None
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return _os_error_message(error)
    if isinstance(error, OSError) and error.errno is not None:  # a full disk, a read-only folder, ...
        return _os_error_message(error)
    if isinstance(error, ValueError):
        return str(error) or type(error).__name__
    for module, name in _NAMED_USER_ERRORS:
        known = _imported_class(module, name)
        if known is not None and isinstance(error, known):
            return str(error) or name
    return None


def config_groups(*groups: str, config_dir: Path = CONFIG_DIR) -> str:
    """``group: option, option, ...`` lines (as Hydra's ``$APP_CONFIG_GROUPS`` writes them) for the
    config groups a tool reads, so that its ``--help`` lists those and not every group of training."""
    lines = []
    for group in groups:
        options = sorted(path.stem for path in (config_dir / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_help_resolver(config_dir: Path = CONFIG_DIR) -> None:
    """``${config_groups:task,data}`` in the help templates of configs/hydra/help/, listing the
    options found in ``config_dir``."""
    from omegaconf import OmegaConf  # noqa: PLC0415  (light; Hydra imports it anyway)

    OmegaConf.register_new_resolver(
        "config_groups", lambda *groups: config_groups(*groups, config_dir=config_dir), replace=True
    )


def _key(argument: str) -> str:
    return argument.split("=", 1)[0].lstrip("+~")


def with_task_from_checkpoint(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``task=<the checkpoint's task>`` added when it names a checkpoint and no task or
    experiment, so that Hydra composes the right task's defaults."""
    argv = list(argv)
    arguments = [a for a in argv[1:] if "=" in a]
    keys = {_key(a) for a in arguments}
    paths = [a.split("=", 1)[1] for a in arguments if _key(a) == "ckpt_path"]
    if "task" in keys or "experiment" in keys or not paths or not paths[-1] or paths[-1] == "last":
        return argv
    if any(a in ("--help", "-h", "--hydra-help") for a in argv[1:]):
        return argv  # help answers without reading the checkpoint (nor loading torch)
    path = Path(paths[-1]).expanduser()
    try:
        from vision_mnv2.pipelines import PIPELINES, read_description  # noqa: PLC0415

        task = read_description(path).task
    except Exception:
        return argv  # the tool reports an unreadable file with its own message
    return [*argv, f"task={PIPELINES[task].config_name}"] if task in PIPELINES else argv


def compose_config(config_name: str, overrides: Sequence[str] = (), output_dir: str | os.PathLike | None = None):
    """The configuration a tool composes from ``configs/<config_name>.yaml`` and the command-line
    ``overrides``, for code that runs a tool's work in its own process (the benchmarks train and
    evaluate through it). Hydra's own config is registered as ``hydra.main`` does, so that the work
    sees which overrides were given; ``output_dir`` is the run folder."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415
    from omegaconf import open_dict  # noqa: PLC0415

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return cfg
