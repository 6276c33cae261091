"""Reading weight files: torchvision's MobileNetV2 state dicts and this project's own checkpoints
(MobileNetV2 or MobileNetV1 backbones).

Files are read with ``torch.load(weights_only=True)``: a weight file is data, never code.

Key layouts understood here:

* torchvision ``mobilenet_v2`` (``features.{i}.conv.{j}...``, ``classifier.1.*``): the file torchvision
  caches as ``mobilenet_v2-7ebf99e0.pth``. Renamed to this project's ``backbone.features.{i}.{expand,
  depthwise,project}...`` layout.
* A Lightning checkpoint of this project (``{"state_dict": {"model.<key>": ...}}``).
* A plain state dict of one of this project's models (``torch.save(model.state_dict(), path)``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from ..files import UnreadableFile, load_torch_file

__all__ = [
    "TransferReport",
    "WeightsError",
    "from_torchvision_mobilenet_v2",
    "load_state_dict_file",
    "load_weights",
    "resolve_weights",
    "transfer_weights",
]

# Prefix under which the Lightning task modules of this project hold their network.
TASK_MODEL_PREFIX = "model."


log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A weight file that cannot be read or does not fit the model; the message says why."""


def _torchvision_weight_names() -> dict[str, str]:
    from torchvision.models import MobileNet_V2_Weights  # noqa: PLC0415

    names = {w.name: w.url for w in MobileNet_V2_Weights}
    names["DEFAULT"] = MobileNet_V2_Weights.DEFAULT.url
    return names


def resolve_weights(spec: str | os.PathLike) -> Path:
    """A weight file path, or torchvision's MobileNetV2 ImageNet weights by name.

    Names (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``, optionally written
    ``MobileNet_V2_Weights.IMAGENET1K_V1``) are looked up in torch hub's local cache, where
    torchvision itself keeps them. Nothing is downloaded: when the file is missing, the error says
    which file to fetch and where to put it.
    """
    text = str(spec)
    name = text.removeprefix("MobileNet_V2_Weights.")
    known = _torchvision_weight_names()
    if name not in known:
        return Path(text).expanduser()
    import torch.hub  # noqa: PLC0415

    url = known[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise WeightsError(
            f"torchvision MobileNetV2 weights {name} are not in the local cache and this project does not "
            f"download: fetch {url} and put it at {path} (or set TORCH_HOME), or pass the file's path instead"
        )
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a weight file safely and return a flat state dict of tensors.

    Lightning checkpoints are unwrapped (``state_dict``) and their ``model.`` prefix is removed.
    """
    path = resolve_weights(path)
    try:
        obj = load_torch_file(path)
    except FileNotFoundError:
        raise WeightsError(f"weights file {str(path)!r} does not exist") from None
    except UnreadableFile as error:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {error}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
        if any(k.startswith(TASK_MODEL_PREFIX) for k in obj):
            obj = {k[len(TASK_MODEL_PREFIX) :]: v for k, v in obj.items() if k.startswith(TASK_MODEL_PREFIX)}
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return dict(obj)


_TV_BLOCK = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
_TV_CONV = re.compile(r"^features\.(\d+)\.(\d+\..+)$")


def is_torchvision_mobilenet_v2(state_dict: Mapping[str, Tensor]) -> bool:
    return any(_TV_BLOCK.match(k) for k in state_dict) and not any(k.startswith("backbone.") for k in state_dict)


def from_torchvision_mobilenet_v2(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision ``mobilenet_v2`` keys to this project's ``MobileNetV2`` keys.

    torchvision's bottleneck is one Sequential ``conv``: ``[expand?, depthwise, project conv, project BN]``;
    ours names the parts. Blocks with expansion factor 1 have no ``expand`` (recognised by the
    depthwise conv sitting at ``conv.0``, whose weight has one input channel per group).
    """
    has_expand: dict[int, bool] = {}
    for key, value in state_dict.items():
        m = _TV_BLOCK.match(key)
        if m and m.group(2) == "0" and m.group(3) == "0.weight":
            # conv.0 is the 1x1 expansion unless it is the 3x3 depthwise (t == 1).
            has_expand[int(m.group(1))] = value.shape[-1] == 1
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = _TV_BLOCK.match(key)
        if m:
            block, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            names = ["expand", "depthwise", "project.0", "project.1"]
            if not has_expand.get(block, True):
                names = names[1:]
            if part >= len(names):
                out[key] = value  # leave unknown keys for the strict check to report
                continue
            out[f"backbone.features.{block}.{names[part]}.{rest}"] = value
            continue
        m = _TV_CONV.match(key)
        if m:
            out[f"backbone.features.{m.group(1)}.{m.group(2)}"] = value
            continue
        out[key] = value
    return out


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _read_in_project_layout(path: str | os.PathLike) -> dict[str, Tensor]:
    """A weight file's state dict, with torchvision's MobileNetV2 keys renamed to this project's."""
    state_dict = load_state_dict_file(path)
    return from_torchvision_mobilenet_v2(state_dict) if is_torchvision_mobilenet_v2(state_dict) else state_dict


def _check_fit(
    own: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], path, target: str, unexpected_too: bool
) -> None:
    """Raise :class:`WeightsError` naming every missing, unexpected (if asked) or mis-shaped key."""
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own) if unexpected_too else []
    mismatched = sorted(
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    )
    problems = [
        f"{what}: {_describe(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise WeightsError(f"weights file {str(path)!r} does not fit {target}: " + "; ".join(problems))


# Both backbones' stem conv: how a backbone is found in a file, whatever the task around it.
_STEM_KEY = "features.0.0.weight"
# What tells the two apart: the first layer after the stem (V2's bottleneck has a projection, V1's
# separable layer a pointwise conv).
_FAMILY_KEYS = {"features.1.project.0.weight": "MobileNetV2", "features.1.pointwise.0.weight": "MobileNetV1"}


def _backbone_prefixes(keys) -> list[str]:
    return sorted({k[: -len(_STEM_KEY)] for k in keys if k.endswith(_STEM_KEY)})


def _family(keys, prefix: str) -> str | None:
    """``"MobileNetV2"`` / ``"MobileNetV1"`` for the backbone under ``prefix``, ``None`` if neither."""
    keys = set(keys)
    found = [family for key, family in _FAMILY_KEYS.items() if prefix + key in keys]
    return found[0] if len(found) == 1 else None


def _check_family(file_keys, file_prefix: str, own_keys, own_prefix: str, path) -> None:
    """A MobileNetV2 backbone's weights offered to a MobileNetV1 (or the reverse): name both, rather
    than list every key that does not fit."""
    theirs, ours = _family(file_keys, file_prefix), _family(own_keys, own_prefix)
    if theirs and ours and theirs != ours:
        raise WeightsError(
            f"weights file {str(path)!r} holds a {theirs} backbone; this model's backbone is a {ours} "
            "(backbone=mobilenet_v1|mobilenet_v2 must match the weights)"
        )


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a weight file into ``model``; any missing or unexpected key, or a shape that does not fit,
    raises :class:`WeightsError` naming them."""
    state_dict = _read_in_project_layout(path)
    own = model.state_dict()
    theirs, ours = _backbone_prefixes(state_dict), _backbone_prefixes(own)
    if len(theirs) == 1 and len(ours) == 1:
        _check_family(state_dict, theirs[0], own, ours[0], path)
    _check_fit(own, state_dict, path, type(model).__name__, unexpected_too=True)
    model.load_state_dict(state_dict)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load only the backbone (MobileNetV2 or MobileNetV1) out of any weight file this project understands.

    The file may be torchvision's classifier, or a checkpoint of any task here (classifier, detector,
    segmenter): the backbone is found by its stem conv wherever it sits in the file, and every one of
    its keys must fit.
    """
    state_dict = _read_in_project_layout(path)
    prefixes = _backbone_prefixes(state_dict)
    if len(prefixes) != 1:
        raise WeightsError(
            f"weights file {str(path)!r} holds {len(prefixes)} MobileNet backbones "
            f"(found under {prefixes or 'no prefix'}); expected exactly one"
        )
    prefix = prefixes[0]
    own = backbone.state_dict()
    _check_family(state_dict, prefix, own, "", path)
    backbone_keys = {
        k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix) and k[len(prefix) :] in own
    }
    _check_fit(own, backbone_keys, path, "the backbone", unexpected_too=False)
    backbone.load_state_dict(backbone_keys)


@dataclass
class TransferReport:
    """What :func:`transfer_weights` took from a file."""

    source: str
    backbone: int = 0  # backbone tensors loaded
    other: list[str] = field(default_factory=list)  # head tensors loaded (same name and shape)
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: left as initialised
    not_in_file: list[str] = field(default_factory=list)  # model tensors the file does not have

    def summary(self) -> str:
        lines = [f"initialised from {self.source}: {self.backbone} backbone tensors, {len(self.other)} head tensors"]
        if self.mismatched:
            lines.append(f"  re-initialised (shape differs, e.g. other classes): {_describe(self.mismatched)}")
        if self.not_in_file:
            lines.append(f"  not in the file, left as initialised: {_describe(self.not_in_file)}")
        return "\n".join(lines)


def _backbone_prefix(keys, where: str) -> str:
    prefixes = _backbone_prefixes(keys)
    if len(prefixes) != 1:
        raise WeightsError(
            f"{where} holds {len(prefixes)} MobileNet backbones (under {prefixes or 'no prefix'}); expected one"
        )
    return prefixes[0]


def transfer_weights(model: nn.Module, path: str | os.PathLike) -> TransferReport:
    """Start ``model`` from the weights of *another* model: a torchvision ``mobilenet_v2`` file or
    a checkpoint of any task of this project.

    The backbone is matched by its position (found by the stem conv in file and model, whatever the
    surrounding task) and must fit completely; every other tensor is taken when the model has one of
    the same name and shape, so heads carry over between runs of one task with the same classes and
    are left freshly initialised when the classes differ. Returns what was and was not loaded.
    """
    state_dict = _read_in_project_layout(path)
    own = model.state_dict()
    file_prefix = _backbone_prefix(state_dict, f"weights file {str(path)!r}")
    model_prefix = _backbone_prefix(own, type(model).__name__)
    _check_family(state_dict, file_prefix, own, model_prefix, path)
    report = TransferReport(str(path))
    chosen: dict[str, Tensor] = {}
    backbone_own = {k[len(model_prefix) :]: v for k, v in own.items() if k.startswith(model_prefix)}
    backbone_file = {k[len(file_prefix) :]: v for k, v in state_dict.items() if k.startswith(file_prefix)}
    _check_fit(backbone_own, backbone_file, path, "the backbone", unexpected_too=False)
    for key in backbone_own:
        chosen[model_prefix + key] = backbone_file[key]
    report.backbone = len(chosen)
    for key, value in own.items():
        if key.startswith(model_prefix):
            continue
        if key not in state_dict:
            report.not_in_file.append(key)
        elif state_dict[key].shape != value.shape:
            report.mismatched.append(key)
        else:
            chosen[key] = state_dict[key]
            report.other.append(key)
    model.load_state_dict(chosen, strict=False)
    log.info(report.summary())
    return report
