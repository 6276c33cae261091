"""vision-mnv2: classification, SSDLite detection and DeepLabv3 segmentation on one MobileNetV2.

``vision_mnv2.load(path)`` turns a checkpoint or an ONNX export into a ready model of its task
(:mod:`vision_mnv2.pipelines`). Importing the package itself is cheap: submodules load on use.
"""

from __future__ import annotations

__all__ = ["load"]


def __getattr__(name: str):
    if name == "load":
        from .pipelines import load  # noqa: PLC0415

        return load
    raise AttributeError(f"module 'vision_mnv2' has no attribute {name!r}")
