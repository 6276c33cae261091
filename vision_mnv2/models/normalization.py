"""Input normalisation as a setting of the model, not of the data pipeline.

Every network of this project takes RGB images scaled to [0, 1] (pixel / 255) and normalises them
itself, as torchvision's detectors do. The statistics are part of the trained weights: a model
trained on ImageNet statistics fed TF's ``(x - 128) / 128`` sees wrongly scaled input. So they are
a builder argument, travel in checkpoints and exports, and callers never apply them by hand.

Settings: ``"imagenet"`` (torchvision's mean/std, what its pretrained MobileNetV2 expects), ``"tf"``
(TF-slim / DeepLab / the Object Detection API: ``(pixel - 128) / 128``), or explicit
``{"mean": [r, g, b], "std": [r, g, b]}`` in [0, 1] units (a pair ``[mean, std]`` of lists is also
taken).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["NORMALIZATIONS", "InputNormalization", "Normalization", "resolve_normalization"]


@dataclass(frozen=True)
class Normalization:
    """``(image - mean) / std`` on RGB images in [0, 1]; ``name`` is the preset it came from, if any."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str | None = None

    def as_dict(self) -> dict:
        """Plain values, for checkpoints and export metadata."""
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}


NORMALIZATIONS: dict[str, Normalization] = {
    "imagenet": Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet"),
    # (pixel - 128) / 128 written on pixel / 255.
    "tf": Normalization((128 / 255,) * 3, (128 / 255,) * 3, "tf"),
}


def _three(values, what: str, spec) -> tuple[float, float, float]:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != 3:
        raise ValueError(f"normalization {what} must be 3 numbers (R, G, B), got {values!r} in {spec!r}")
    try:
        return tuple(float(v) for v in values)  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise ValueError(f"normalization {what} must be 3 numbers (R, G, B), got {values!r} in {spec!r}") from None


def resolve_normalization(spec: str | Mapping | Sequence | Normalization | None) -> Normalization:
    """A :class:`Normalization` from a preset name, ``{"mean": ..., "std": ...}`` or ``[mean, std]``.

    ``None`` is ImageNet's (the default of every builder). A named preset written out in full
    (as checkpoints store it) resolves to the preset.
    """
    if spec is None:
        return NORMALIZATIONS["imagenet"]
    if isinstance(spec, Normalization):
        return spec
    if isinstance(spec, str):
        if spec not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {spec!r}; use one of {sorted(NORMALIZATIONS)} or {{mean: [r, g, b], std: [r, g, b]}}"
            )
        return NORMALIZATIONS[spec]
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"mean", "std", "name"}
        if unknown or "mean" not in spec or "std" not in spec:
            raise ValueError(
                f"normalization needs exactly 'mean' and 'std' (and optionally 'name'), got {dict(spec)!r}"
            )
        mean, std = _three(spec["mean"], "mean", spec), _three(spec["std"], "std", spec)
    elif isinstance(spec, Sequence) and len(spec) == 2:
        mean, std = _three(spec[0], "mean", spec), _three(spec[1], "std", spec)
    else:
        raise ValueError(f"normalization must be a name, {{mean, std}} or [mean, std], got {spec!r}")
    if any(s <= 0 for s in std):
        raise ValueError(f"normalization std must be positive, got {list(std)}")
    if any(not 0.0 <= m <= 1.0 for m in mean):
        raise ValueError(
            f"normalization mean {list(mean)} must be in [0, 1] units (images are pixel / 255 before normalising)"
        )
    for preset in NORMALIZATIONS.values():
        # The preset's numbers after a round trip through a checkpoint or JSON: the preset itself.
        if _close(mean, preset.mean) and _close(std, preset.std):
            return preset
    return Normalization(mean, std, None)


def _close(values: Sequence[float], reference: Sequence[float]) -> bool:
    return all(abs(a - b) <= 1e-6 for a, b in zip(values, reference))


class InputNormalization(nn.Module):
    """``(images - mean) / std`` for N x 3 x H x W images in [0, 1]. The statistics are buffers that
    are not saved in state dicts (they are a builder setting), so checkpoints of any version load."""

    def __init__(self, normalization: str | Mapping | Sequence | Normalization | None = None) -> None:
        super().__init__()
        self.normalization = resolve_normalization(normalization)
        self.register_buffer("mean", torch.tensor(self.normalization.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.normalization.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return self.normalization.name or f"mean={list(self.normalization.mean)}, std={list(self.normalization.std)}"
