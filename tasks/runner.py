"""Train and evaluate from a composed Hydra config. ``tools/train.py`` and ``tools/eval.py`` call these;
tests call them directly with configs composed by ``hydra.compose``."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from omegaconf import DictConfig, open_dict

from vision_mnv2.checkpoint import load_model, read_checkpoint
from vision_mnv2.files import atomic_write_text

from .atomic_checkpoint_io import AtomicCheckpointIO
from .checkpoint_config import checkpoint_model, evaluation_data, inherit_from_init, run_info, task_of_config
from .optim import steps_per_epoch
from .quiet import quiet_lightning
from .resume import RunStart, is_lead_process, record_settings, start_point

log = logging.getLogger(__name__)

__all__ = ["build", "train", "train_model", "evaluate"]


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); ``null`` entries are off."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def build(cfg: DictConfig, with_loggers: bool = True) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Datamodule, task module and trainer of a config, in that order."""
    quiet_lightning()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    inherit_from_init(cfg)  # a checkpoint's input conventions travel with its weights
    budget = _budget_in_steps(cfg)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    module.run_info = run_info(cfg)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger")) if with_loggers else []
    if not loggers:
        # The learning-rate monitor only writes to loggers, and Lightning refuses it without one (logger=none).
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    if budget is not None:
        callbacks.append(StepBudget())
    # Checkpoints replaced atomically in their own folder (Lightning stages them in $TMPDIR).
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    return datamodule, module, trainer


def _budget_in_steps(cfg: DictConfig) -> int | None:
    """``trainer.max_steps=N`` is the run's length: the preset's ``max_epochs`` would otherwise stop
    a small dataset's run first (Lightning ends at whichever limit comes first). Returns N, or None
    without a budget."""
    budget = _step_budget_of(cfg)
    if budget is None:
        return None
    if cfg.trainer.get("max_epochs") not in (None, -1):
        log.info("A budget of %d steps (trainer.max_steps); max_epochs=%s is not used", budget, cfg.trainer.max_epochs)
    with open_dict(cfg):
        cfg.trainer.max_epochs = -1
        cfg.trainer.min_epochs = None
    return budget


def _step_budget_of(cfg: DictConfig) -> int | None:
    steps = (cfg.get("trainer") or {}).get("max_steps")
    return int(steps) if steps is not None and steps > 0 else None


class StepBudget(Callback):
    """A run of ``trainer.max_steps`` steps ends as an epoch does: validated and checkpointed after
    its last step, also in the middle of an epoch (Lightning would stop without either), and its
    progress shows the epochs the budget spans."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_epoch = steps_per_epoch(trainer)
        if per_epoch is None:
            return  # training data without a length: the budget alone ends the run
        if trainer.global_step == 0:
            trainer.fit_loop.max_epochs = math.ceil(trainer.max_steps / per_epoch)
        else:
            # Resumed: Lightning's epoch count after a restart may run one ahead, so the epochs are
            # only bounded from above (each has a step at least); the budget ends the run.
            done = trainer.fit_loop.epoch_progress.current.processed
            trainer.fit_loop.max_epochs = done + max(1, trainer.max_steps - trainer.global_step) + 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= trainer.max_steps:
            trainer.check_val_every_n_epoch = 1  # also in an epoch that check_val_every_n_epoch skips
            trainer.should_stop = True  # as early stopping asks: validation, checkpoints, then the end


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if torch.is_tensor(v) and v.numel() == 1}


def _sum_over_processes(trainer: L.Trainer, value: float) -> float:
    """``value`` summed over the DDP processes (each counts its own); every process must call this."""
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        total = torch.tensor(float(value), device=trainer.strategy.root_device)
        return float(trainer.strategy.reduce(total, reduce_op="sum"))
    return value


def _write_json(path: Path, payload: dict) -> None:
    """Strict JSON: an undefined score (NaN: a class in neither the ground truth nor the predictions
    has no IoU) is written as null, which every JSON reader takes; Python's NaN token is not JSON."""
    atomic_write_text(path, json.dumps(_nan_as_null(payload), indent=2, sort_keys=True, allow_nan=False))


def _nan_as_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_as_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_null(item) for item in value]
    return value


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then report the validation metrics of the best checkpoint. Returns metrics and paths.

    ``cfg.ckpt_path`` resumes an earlier run (``last``: the newest that may be continued, see
    :mod:`tasks.resume`); the run folder whose checkpoints are written stays locked while training."""
    start = start_point(cfg)
    try:
        return _train(cfg, start)
    finally:
        start.release()


def train_model(overrides: list[str], output_dir: str | Path) -> torch.nn.Module:
    """The network ``tools/train.py <overrides>`` trains, from its last checkpoint, with the run folder
    at ``output_dir`` and no logger or progress bar (for measurements that train recipes in turn)."""
    from .cli import compose_config  # noqa: PLC0415  (the tools' module, which loads this one)

    cfg = compose_config("train", [*overrides, "logger=none"], Path(output_dir))
    with open_dict(cfg):
        cfg.callbacks.progress_bar = None
    model, _ = load_model(train(cfg)["last_checkpoint"])
    return model


def _train(cfg: DictConfig, start: RunStart) -> dict[str, Any]:
    ckpt_path = start.checkpoint
    if ckpt_path:
        # The project's own message for a file that is not a checkpoint, holds code, or is another
        # task's model (Lightning's would dump key names or suggest unsafe loading).
        read_checkpoint(ckpt_path, task_of_config(cfg))
    if is_lead_process():  # the trainer knows its rank only once fitting starts
        record_settings(cfg)  # before instantiating, which resolves some interpolations in place
    datamodule, module, trainer = build(cfg)
    if start.run_dir != Path(cfg.paths.output_dir).resolve():
        # A resumed run keeps its checkpoints where they were: in another folder Lightning would
        # forget the best score so far, and the first epoch after the resume would become the "best".
        folder = str(start.run_dir / "checkpoints")
        for callback in trainer.checkpoint_callbacks:
            callback.dirpath = folder
        log.info("Resuming: checkpoints continue in %s", folder)
    if ckpt_path and hasattr(datamodule, "start_epoch"):
        # The training order of the epoch the run continues with, before Lightning builds the loader.
        datamodule.start_epoch = _next_epoch(ckpt_path)
    images_seen = _ImagesSeen()
    trainer.callbacks.append(images_seen)
    log.info("Training %s; outputs in %s", cfg.get("task_name"), cfg.paths.output_dir)
    started = time.perf_counter()
    # Resuming reads the checkpoint as data only: ours hold tensors and plain values, so a hostile
    # file cannot run code when it is loaded.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    wall_time = time.perf_counter() - started
    images = _sum_over_processes(trainer, images_seen.images)
    metrics = _metrics(trainer)
    # The monitored callback keeps the best; the unmonitored one (or save_last) keeps the latest.
    checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
    latest = next((c for c in trainer.checkpoint_callbacks if not c.monitor), None)
    best = checkpoint.best_model_path if checkpoint is not None else ""
    last = (latest.best_model_path if latest is not None else "") or (checkpoint.last_model_path if checkpoint else "")
    result = {
        "metrics": metrics,
        "best_checkpoint": best or None,
        "last_checkpoint": last or None,
        "wall_time_s": round(wall_time, 3),  # of the fit, validation and checkpoints included
        "images_per_s": round(images / wall_time, 3),  # training images processed per second of that
        # What the run's length bought: optimizer steps (all, a resumed run's earlier ones included),
        # the epochs they make and the training images of this fit (all processes).
        "steps": int(trainer.global_step),
        "epochs": round(trainer.global_step / (steps_per_epoch(trainer) or math.nan), 3),
        "images": int(images),
        "step_budget": _step_budget_of(cfg),
        "resumed_from": str(ckpt_path) if ckpt_path else None,
    }
    skipped = getattr(datamodule, "skipped", None)
    if skipped:
        result["skipped_samples"] = skipped  # data.skip_bad: bad samples left out, per split
    if getattr(datamodule, "skip_bad", False):  # and training samples that failed to load later, replaced
        result["replaced_samples"] = int(_sum_over_processes(trainer, datamodule.replaced_samples))
    if best and checkpoint.best_model_score is not None and not math.isnan(float(checkpoint.best_model_score)):
        result["best_score"] = {checkpoint.monitor: float(checkpoint.best_model_score)}
    if trainer.is_global_zero:  # under DDP every process gets here; one writes
        metrics_file = Path(cfg.paths.output_dir) / "train_metrics.json"
        _write_json(metrics_file, result)
        log.info(_summary(result, metrics_file))
    return result


def _next_epoch(ckpt_path: str) -> int:
    """The epoch a run resumed from ``ckpt_path`` trains first: Lightning's count of the epochs it
    had processed, or the epoch after the checkpoint's (written at the end of an epoch)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)  # tensors not read
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", checkpoint.get("epoch", -1) + 1))


class _ImagesSeen(Callback):
    """Counts the training images this process runs through."""

    def __init__(self) -> None:
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[0])  # every task's batch is (images, targets)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def _summary(result: dict[str, Any], metrics_file: Path) -> str:
    """The one line a finished run ends with: what its length bought, and where it is."""
    budget = f" of a budget of {result['step_budget']}" if result.get("step_budget") else ""
    epochs = f"{result['epochs']:.2f} epochs, " if math.isfinite(result["epochs"]) else ""  # data without a length
    since = " since the resume" if result.get("resumed_from") else ""  # steps and epochs count the whole run
    line = (
        f"Training done: {result['steps']} steps{budget} ({epochs}{result['images']} images{since}) "
        f"in {_duration(result['wall_time_s'])} ({result['images_per_s']:.1f} images/s)"
    )
    if result.get("best_score"):
        [(name, value)] = result["best_score"].items()
        line += f"; best checkpoint {result['best_checkpoint']} ({name} {value:.4f})"
    elif result["last_checkpoint"]:
        line += f"; last checkpoint {result['last_checkpoint']}"
    else:
        line += "; no checkpoint written"
    return f"{line}; metrics in {metrics_file}"


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Validate the checkpoint ``cfg.ckpt_path`` on a validation split; print and write the metrics.

    The checkpoint gives the task, the network and, when it was trained here, the data; explicit
    ``overrides`` (Hydra's, by default) are checked against it (:mod:`tasks.checkpoint_config`)."""
    if not cfg.get("ckpt_path"):
        raise ValueError("evaluation needs ckpt_path=PATH (a checkpoint written by tools/train.py)")
    ckpt = Path(cfg.ckpt_path).expanduser()
    model, meta = checkpoint_model(cfg, overrides)
    with open_dict(cfg):
        cfg.data = evaluation_data(cfg, meta, overrides)
    quiet_lightning()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    # Validation only: eval.yaml composes no optimiser or schedule.
    module = instantiate(cfg.module, model=model, init_from=None, optimizer=None, scheduler=None)
    trainer = instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")), logger=False)
    # The network already holds the checkpoint's weights (read with weights_only=True).
    trainer.validate(module, datamodule=datamodule, verbose=False)  # printed once, below
    metrics = _metrics(trainer)
    if not trainer.is_global_zero:  # under DDP every process holds the same synchronised numbers
        return metrics
    out = Path(cfg.get("metrics_file") or Path(cfg.paths.output_dir) / "metrics.json")
    _write_json(out, {"checkpoint": str(ckpt), "metrics": metrics})
    width = max(map(len, metrics), default=0)
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items()))
    print(f"metrics written to {out}")
    return metrics
