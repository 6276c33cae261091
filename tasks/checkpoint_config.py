"""Hydra glue between a command's configuration and a checkpoint that describes its own model.

The tools (eval, predict, export, quantize, benchmark) take the task, the network and its
preprocessing from the checkpoint. What the user writes on the command line is checked against it:
an override that contradicts the trained network (``data.num_classes``, ``backbone.width_mult``,
``head.aspp``, ``model.<argument>``) is an error naming both values; an input size or a
post-processing threshold given on purpose is used and logged. Only *explicit* overrides count
(Hydra's list of them): a config default never contradicts a checkpoint.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vision_mnv2.checkpoint import CheckpointError, ModelMeta, read_checkpoint
from vision_mnv2.models import load_weights
from vision_mnv2.models.registry import to_jsonable
from vision_mnv2.pipelines import (
    INFERENCE_OPTIONS,
    PIPELINES,
    Pipeline,
    contradictions,
    describe,
    export_format,
    load,
)

from .module import TaskModule

__all__ = [
    "inherit_from_init",
    "model_builder",
    "run_info",
    "checkpoint_model",
    "evaluation_data",
    "explicit_overrides",
    "open_pipeline",
    "task_of_config",
    "without_weights",
]

log = logging.getLogger(__name__)

# Groups whose settings are the builder's arguments by their own names (the task passes them whole:
# vision_mnv2.models.compose_model); what else a command line sets for the builder.
ARGUMENT_GROUPS = ("model", "backbone", "head")
NOT_BUILDER_KEYS = frozenset({"model.builder", "backbone.name", "backbone.weights", "model.weights"})
DATA_BUILDER_KEYS = {"data.num_classes": "num_classes"}
# Where a stored data configuration may point: this project's datamodules and generators only, so
# a checkpoint cannot make Hydra instantiate anything else.
DATA_TARGETS = ("tasks.datamodules.", "vision_mnv2.data.")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def explicit_overrides() -> list[str]:
    """The command line's overrides (``key=value``), when Hydra ran or composed with them."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def task_modules() -> dict[str, type[TaskModule]]:
    """The task modules by their task (``classification``, ``detection``, ``segmentation``)."""
    from . import classification, detection, segmentation  # noqa: F401, PLC0415  (defines the subclasses)

    return {cls.task: cls for cls in TaskModule.__subclasses__() if "task" in vars(cls)}


def task_of_config(cfg: DictConfig) -> str:
    """The task the config's module trains (a subclass of a task module trains its task)."""
    target = str(cfg.module._target_)
    module_name, _, name = target.rpartition(".")
    try:
        module = getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name + ".").startswith(error.name + "."):
            raise  # the user's module exists but needs something missing: that is the error to see
        module = None
    if not (isinstance(module, type) and issubclass(module, TaskModule) and hasattr(module, "task")):
        known = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in task_modules().values())
        raise ValueError(f"unknown task module {target!r}; expected one of {known} or a subclass")
    return module.task


def _builder_overrides(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """Builder arguments set on the command line: ``{argument: (override key, value)}``."""
    given: dict[str, tuple[str, Any]] = {}
    for override in overrides:
        key = _key(override)
        group, _, argument = key.partition(".")
        if key in DATA_BUILDER_KEYS:
            argument = DATA_BUILDER_KEYS[key]
        elif group not in ARGUMENT_GROUPS or key in NOT_BUILDER_KEYS:
            continue
        if argument and "." not in argument:
            value = OmegaConf.select(cfg, key)
            if value is None and group == "backbone":
                continue  # unset: the network's own, whatever the checkpoint's is
            given[argument] = (key, to_jsonable(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value))
    return given


def _expected_task(cfg: DictConfig, overrides: Sequence[str]) -> str | None:
    """The task the user asked for explicitly (task= or experiment=), else None: any task is fine."""
    keys = {_key(o) for o in overrides}
    return task_of_config(cfg) if keys & {"task", "experiment"} else None


def _image_size(cfg: DictConfig, overrides: Sequence[str]) -> int | None:
    key = "image_size" if cfg.get("image_size") is not None else "data.image_size"
    if key == "data.image_size" and key not in {_key(o) for o in overrides}:
        return None
    value = OmegaConf.select(cfg, key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, str))
        or not str(value).isdigit()
        or int(value) < 1
    ):
        raise ValueError(f"{key}={value!r}: give the working size as a whole number of pixels, e.g. {key}=320")
    return int(value)


def _check(meta: ModelMeta, given: dict[str, tuple[str, Any]], path: Path) -> dict[str, Any]:
    """Raise on contradicting overrides (naming the command line's key); return the inference
    options given."""
    found = contradictions(meta, {argument: value for argument, (_, value) in given.items()})
    if found:
        names = {argument: key for argument, (key, _) in given.items()}
        raise CheckpointError(
            "; ".join(
                f"{names[argument]}={value!r} contradicts the checkpoint, whose model has {argument}={stored!r}"
                for argument, value, stored in found
            )
            + f" ({path}); leave it out: the checkpoint says what its model is"
        )
    return {argument: value for argument, (_, value) in given.items() if argument in INFERENCE_OPTIONS}


def _legacy_model(cfg: DictConfig, path: Path) -> torch.nn.Module:
    """A checkpoint without a model description (vision-mnv2 0.1): the network of the command's
    configuration, as that version did."""
    log.warning(
        "%s was written before checkpoints described their model; building the network from the command's "
        "configuration (task, data.num_classes, backbone.*, head.* must match the training run)",
        path,
    )
    without_weights(cfg)
    model = instantiate(cfg.model)
    load_weights(model, path)
    return model.eval()


def checkpoint_model(cfg: DictConfig, overrides: Sequence[str] | None = None) -> tuple[torch.nn.Module, ModelMeta]:
    """The checkpoint's network (weights loaded, eval mode, batch norm not folded) and description,
    with the command's explicit overrides checked against it. For evaluation and training tools."""
    from vision_mnv2.checkpoint import load_model  # noqa: PLC0415

    overrides = explicit_overrides() if overrides is None else list(overrides)
    path = Path(cfg.ckpt_path).expanduser()
    _, meta = read_checkpoint(path, _expected_task(cfg, overrides) or task_of_config(cfg))
    if meta.builder is None:
        model = _legacy_model(cfg, path)
        return model, describe(
            meta.task or task_of_config(cfg),
            model,
            _preprocessing_hints(cfg),
            class_names=meta.class_names,
            category_ids=meta.category_ids,
        )
    changes = _check(meta, _builder_overrides(cfg, overrides), path)
    size = _image_size(cfg, overrides)
    if size and meta.task in PIPELINES and PIPELINES[meta.task].builder_takes_image_size:
        changes["image_size"] = size
    return load_model(path, meta.task, **changes)


def _preprocessing_hints(cfg: DictConfig) -> dict[str, Any]:
    data = cfg.get("data") or {}
    return {
        "image_size": data.get("image_size"),
        "mode": data.get("eval_preprocessing"),
        "crop_fraction": data.get("crop_fraction", 0.875),
        "pad_to": data.get("eval_pad_size"),
    }


def _preprocessing_settings(cfg: DictConfig) -> dict[str, Any]:
    """The command's ``preprocessing.*`` settings (predict, export): how photos are fitted to the
    network, in place of what the checkpoint records."""
    settings = cfg.get("preprocessing") or {}
    return dict(OmegaConf.to_container(settings, resolve=True)) if OmegaConf.is_config(settings) else dict(settings)


def open_pipeline(cfg: DictConfig, overrides: Sequence[str] | None = None, **pipeline_options: Any) -> Pipeline:
    """The checkpoint (or ONNX export) ``cfg.ckpt_path`` as a ready pipeline, with the command's
    explicit overrides checked against it and its inference options applied. For predict, export,
    quantize and benchmark."""
    overrides = explicit_overrides() if overrides is None else list(overrides)
    if not cfg.get("ckpt_path"):
        raise ValueError("needs ckpt_path=PATH (a checkpoint written by tools/train.py or tools/convert.py)")
    path = Path(cfg.ckpt_path).expanduser()
    expected = _expected_task(cfg, overrides)
    preprocessing = _preprocessing_settings(cfg)
    if export_format(path) is not None:
        return load(
            path, expected, threads=cfg.get("threads"), pipeline_options=pipeline_options, preprocessing=preprocessing
        )
    _, meta = read_checkpoint(path, expected)
    if "module" in cfg and meta.task in PIPELINES:
        pipeline_options = {**PIPELINES[meta.task].options_from_training(cfg.module), **pipeline_options}
    if meta.builder is None:
        model = _legacy_model(cfg, path)
        if cfg.get("fold_bn", True):
            from vision_mnv2.onnx_export import fold_batch_norm  # noqa: PLC0415

            fold_batch_norm(model)
        legacy = describe(
            meta.task or task_of_config(cfg),
            model,
            _preprocessing_hints(cfg),
            class_names=meta.class_names,
            category_ids=meta.category_ids,
        )
        return PIPELINES[legacy.task](legacy, model, **pipeline_options)
    changes = _check(meta, _builder_overrides(cfg, overrides), path)
    pipeline = load(
        path,
        meta.task,
        image_size=_image_size(cfg, overrides),
        fold_bn=bool(cfg.get("fold_bn", True)),
        pipeline_options=pipeline_options,
        preprocessing=preprocessing,
        **changes,
    )
    if cfg.get("module") is not None and cfg.module.get("channels_last", False) and pipeline.model is not None:
        pipeline.model.to(memory_format=torch.channels_last)
    return pipeline


def evaluation_data(
    cfg: DictConfig,
    meta: ModelMeta,
    overrides: Sequence[str] | None = None,
    missing: str | None = None,
    any_data: bool = False,
) -> DictConfig:
    """The data configuration to score a checkpoint on: the command's when it names data (``data=``,
    ``data.*``, ``experiment=``), else the one the model was trained with (stored in the checkpoint).
    A checkpoint that records none (converted, or saved by hand) is an error saying what to give
    (``missing``: what to name instead of data, e.g. calibration images), unless ``any_data`` (timing
    a training step, which any data of the task serves): then the task's default. Class count and
    evaluation sizes come from the model."""
    overrides = explicit_overrides() if overrides is None else list(overrides)
    keys = {_key(o) for o in overrides}
    named = any(k == "data" or k.startswith("data.") or k == "experiment" for k in keys)
    stored = (meta.training or {}).get("data")
    if not named and not isinstance(stored, dict) and meta.builder is not None and not any_data:
        # A converted or hand-saved model: the task's default data (generated shapes) would be
        # written first and then fail on its classes, or score nonsense.
        source = (meta.training or {}).get("converted_from")
        raise CheckpointError(
            f"{cfg.ckpt_path} does not record the data it was trained on"
            + (f" (converted from {source})" if source else "")
            + "; "
            + (
                missing
                or f"say which data to score it on: {task_modules().get(meta.task, TaskModule).real_data_example}"
            )
        )
    if named or not isinstance(stored, dict):
        data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    else:
        _check_targets(stored, Path(cfg.ckpt_path))
        data = OmegaConf.create(stored)
        log.info(
            "evaluating on the data the model was trained with (%s; data=... / data.root=... to change)",
            stored.get("root"),
        )
    with open_dict(data):
        if meta.num_classes is not None and "data.num_classes" not in keys:
            data.num_classes = int(meta.num_classes)
        if meta.task in PIPELINES and "data.image_size" not in keys:
            settings = PIPELINES[meta.task].evaluation_data_settings(meta.preprocessing, data)
            data.update({key: value for key, value in settings.items() if f"data.{key}" not in keys})
    return data


def _check_targets(config: Any, path: Path) -> None:
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and not str(target).startswith(DATA_TARGETS):
            raise CheckpointError(
                f"{path}: its data configuration names {target!r}, which is not this project's; refused"
            )
        for value in config.values():
            _check_targets(value, path)
    elif isinstance(config, list):
        for value in config:
            _check_targets(value, path)


def run_info(cfg: DictConfig) -> dict[str, Any]:
    """What a training run's checkpoints record about the run: its name and data configuration."""
    data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=False) if "data" in cfg else None
    return {"task_name": cfg.get("task_name"), "data": to_jsonable(data)}


# Builder arguments that say how a network's weights expect to be fed and laid out rather than what
# the network is: a model started from a checkpoint's weights must take them over, or it is fed
# wrongly scaled input (normalisation) or shifted convolutions (TF's padding) without a word.
INHERITED = ("normalization", "tf_padding", "round_nearest")
# ... and, between networks of the same builder, these too (DeepLab's corner-aligned upsampling).
INHERITED_SAME_BUILDER = ("align_corners",)
# ... and, between networks on the same backbone (any task), the backbone's width: its weights fit no
# other (a converted MobileNetV1 0.25 starts a MobileNetV1 0.25 classifier, detector or segmenter).
INHERITED_SAME_BACKBONE = ("width_mult", "min_depth")
BACKBONES = ("mobilenet_v1", "mobilenet_v2")


def _backbone_of(builder: str) -> str | None:
    return next((name for name in BACKBONES if builder.endswith(name)), None)


def model_builder(cfg: DictConfig) -> str:
    """The name of the builder the config's model section calls: ``model.builder`` for a network
    composed from the backbone and head groups, else the ``_target_`` builder's own name."""
    builder = cfg.model.get("builder")
    return str(builder) if builder else str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1]


def without_weights(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the model's weight files unset (the network's shape is all that counts), in place."""
    with open_dict(cfg):
        for group, key in (("model", "weights"), ("model", "backbone_weights"), ("backbone", "weights")):
            if key in (cfg.get(group) or {}):
                cfg[group][key] = None
    return cfg


def _builder_defaults(name: str) -> dict[str, Any]:
    import inspect  # noqa: PLC0415

    from vision_mnv2.models.registry import BUILDERS  # noqa: PLC0415

    if name not in BUILDERS:
        return {}
    parameters = inspect.signature(BUILDERS[name][1]).parameters
    return {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}


def inherit_from_init(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """For ``init_from=<checkpoint of this project>``: set the model's input conventions
    (:data:`INHERITED`) and, on the same backbone, its width (:data:`INHERITED_SAME_BACKBONE`) to
    the checkpoint's, unless the command sets them explicitly; returns what was set. Torchvision
    files and names carry no description and need none (ImageNet statistics, PyTorch padding: the
    defaults)."""
    source = cfg.get("init_from")
    if not source or "model" not in cfg or export_format(str(source)) is not None:
        return {}
    path = Path(str(source)).expanduser()
    if not path.is_file():
        return {}  # a torchvision name, or a missing file that init_from itself reports
    try:
        _, meta = read_checkpoint(path)
    except CheckpointError:
        return {}  # a torchvision state dict, or a bad file: transfer_weights reports it
    if meta.builder is None:
        return {}
    explicit = {_key(o) for o in (explicit_overrides() if overrides is None else overrides)}
    target = model_builder(cfg)
    defaults = _builder_defaults(target)
    keys = INHERITED + (INHERITED_SAME_BUILDER if target == meta.builder else ())
    if _backbone_of(target) is not None and _backbone_of(target) == _backbone_of(meta.builder):
        keys += INHERITED_SAME_BACKBONE
    taken = {}
    with open_dict(cfg):
        for key in keys:
            if key not in meta.builder_args or any(f"{group}.{key}" in explicit for group in ARGUMENT_GROUPS):
                continue
            if key in INHERITED_SAME_BACKBONE and key not in defaults:
                continue  # a setting this builder does not take (DeepLab on MobileNetV1 has no min_depth)
            value = meta.builder_args[key]
            # The group that sets it (the backbone's width lives in backbone/*.yaml), else the model's.
            holder = next((g for g in ("backbone", "head") if key in (cfg.get(g) or {})), "model")
            group = cfg[holder]
            current = group.get(key)
            current = defaults.get(key) if current is None else current  # what the model would be built with
            current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
            if not contradictions(ModelMeta(builder_args={key: value}), {key: current}):
                continue
            group[key] = value
            taken[key] = value
    if taken:
        log.info(
            "init_from %s: its weights expect %s, so the new model takes them "
            "(set backbone.<key>, head.<key> or model.<key> to choose otherwise)",
            path,
            ", ".join(f"{k}={v if not isinstance(v, dict) else v.get('name') or v}" for k, v in taken.items()),
        )
    return taken
