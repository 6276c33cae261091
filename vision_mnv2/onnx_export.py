"""Export helpers: batch norm folded into convolutions, and ONNX files written atomically with
their metadata. What each task exports (inputs, outputs, wrappers) is its pipeline's business
(:mod:`vision_mnv2.pipelines`); every exported graph takes ``images``, float32 N x 3 x H x W RGB in
[0, 1], and normalises inside."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .files import atomic_write

__all__ = ["fold_batch_norm", "write_onnx"]


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution in a ``Sequential`` (all of them in
    these networks) into that convolution, in place, for inference: one op less per layer, same
    outputs. The model must be in eval mode (running statistics are what gets folded)."""
    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, bn = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[index] = fuse_conv_bn_eval(conv, bn)
                module[index + 1] = nn.Identity()
    return model


def write_onnx(
    module: nn.Module,
    path: str | os.PathLike,
    example: Tensor,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, str] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``module`` (input ``images``) to ONNX with ``metadata`` in ``metadata_props``. The file
    appears whole or not at all (:func:`vision_mnv2.files.atomic_write`)."""
    import io  # noqa: PLC0415

    import onnx  # noqa: PLC0415

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer notes every Python number taken from a tensor (shapes, thresholds): all of
        # them are constants of the exported graph by design.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Our advanced indices are never negative, the case this warning is about.
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # The TorchScript exporter is chosen on purpose (see dynamo=False below).
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            input_names=["images"],
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, matches onnxruntime
        )
    graph = onnx.load_from_string(buffer.getvalue())
    if metadata:
        onnx.helper.set_model_props(graph, dict(metadata))
    return atomic_write(path, lambda handle: handle.write(graph.SerializeToString()))
