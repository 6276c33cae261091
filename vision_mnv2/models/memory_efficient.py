"""Memory-efficient inference of inverted residual blocks (paper section 5.1).

A bottleneck computes F(x) = B(N(A(x))): A the 1x1 expansion (+BN+ReLU6), N the per-channel
depthwise conv (+BN+ReLU6), B the linear 1x1 projection. A and N act on each expanded channel
independently, and B is linear, so with the expanded channels cut into k groups

    F(x) = BN_B( sum_i B_i(N_i(A_i(x))) )

and only one group of the expanded tensor (t times wider than the block's input and output) is ever
alive. The multiply-adds do not change. TF-slim calls this ``split_expansion``; no common PyTorch
library ships it. It applies in eval mode only (batch norm uses its running statistics, so it is a
per-channel affine map that splits exactly); training always takes the standard path.

The paper's ablations (section 6.4): a ReLU6 after the projection (``bottleneck_activation="relu6"``)
acts on the whole sum, after the groups are added up, so it is applied there and the split stays
exact. A shortcut between expansions (``shortcut="expansion"``) hands each block's whole expanded
tensor to the next block, the tensor this path never materialises: such networks are refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..layers import TFSamePadConv2d

__all__ = ["split_expansion_forward", "set_expansion_groups", "memory_efficient_inference", "largest_activations"]


def _bn_slice(x: Tensor, bn: nn.Module, start: int, end: int) -> Tensor:
    if not isinstance(bn, nn.BatchNorm2d):
        return x  # folded into the convolution (vision_mnv2.onnx_export.fold_batch_norm)
    return F.batch_norm(
        x, bn.running_mean[start:end], bn.running_var[start:end],
        bn.weight[start:end] if bn.weight is not None else None,
        bn.bias[start:end] if bn.bias is not None else None,
        False, 0.0, bn.eps,
    )  # fmt: skip


def _bias(conv: nn.Conv2d, start: int, end: int) -> Tensor | None:
    return None if conv.bias is None else conv.bias[start:end]


def _group_bounds(channels: int, groups: int) -> list[tuple[int, int]]:
    groups = max(1, min(groups, channels))
    edges = [round(i * channels / groups) for i in range(groups + 1)]
    return [(edges[i], edges[i + 1]) for i in range(groups)]


def split_expansion_forward(block: nn.Module, x: Tensor, groups: int) -> Tensor:
    """The block's output computed over ``groups`` slices of its expanded channels."""
    depthwise_conv, depthwise_bn = block.depthwise[0], block.depthwise[1]
    project_conv, project_bn = block.project[0], block.project[1]
    out = None
    for start, end in _group_bounds(block.hidden_channels, groups):
        if block.expand is not None:
            expand_conv, expand_bn = block.expand[0], block.expand[1]
            hidden = F.conv2d(x, expand_conv.weight[start:end], _bias(expand_conv, start, end))
            hidden = F.relu6(_bn_slice(hidden, expand_bn, start, end), inplace=True)
        else:
            hidden = x[:, start:end]  # expansion factor 1: the input's own channels are the "expansion"
        if isinstance(depthwise_conv, TFSamePadConv2d):  # its padding depends on the input, not in .padding
            hidden = depthwise_conv.pad_input(hidden)
        hidden = F.conv2d(
            hidden, depthwise_conv.weight[start:end], _bias(depthwise_conv, start, end), depthwise_conv.stride,
            depthwise_conv.padding, depthwise_conv.dilation, end - start,
        )  # fmt: skip
        hidden = F.relu6(_bn_slice(hidden, depthwise_bn, start, end), inplace=True)
        part = F.conv2d(hidden, project_conv.weight[:, start:end])
        del hidden  # free this group before the next one is expanded
        out = part if out is None else out.add_(part)
    if project_conv.bias is not None:  # a folded batch norm's shift: added once, not per group
        out = out.add_(project_conv.bias.view(1, -1, 1, 1))
    out = _bn_slice(out, project_bn, 0, out.shape[1])
    for module in list(block.project)[2:]:  # an activation after the projection (ablation): on the sum
        out = module(out)
    if block.use_residual:
        out = out.add_(x)
    return out


def _blocks(model: nn.Module) -> list[nn.Module]:
    # Inverted residual blocks are the modules that have an ``expansion_groups`` setting (found by
    # it rather than by class, so that mobilenetv2.py, which uses this module, is not imported here).
    return [m for m in model.modules() if hasattr(m, "expansion_groups") and hasattr(m, "hidden_channels")]


def set_expansion_groups(model: nn.Module, groups: int | Sequence[int] | Mapping[int, int] | None) -> list[int]:
    """Choose the memory-efficient path for every inverted residual block of ``model``.

    ``groups``: one k for every block (``1`` or ``None``: the standard path), a list with one k per
    block in order (17 for a full MobileNetV2), or ``{block index: k}`` for some blocks. Returns
    the k of each block.
    """
    blocks = _blocks(model)
    if groups is None:
        chosen = [1] * len(blocks)
    elif isinstance(groups, int):
        chosen = [groups] * len(blocks)
    elif isinstance(groups, Mapping):
        chosen = [int(groups.get(i, 1)) for i in range(len(blocks))]
    else:
        chosen = [int(k) for k in groups]
        if len(chosen) != len(blocks):
            raise ValueError(f"expansion_groups lists {len(chosen)} values for {len(blocks)} inverted residual blocks")
    for k in chosen:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"expansion groups must be integers >= 1 (1 = standard path), got {k!r}")
    for index, (block, k) in enumerate(zip(blocks, chosen)):
        if k > 1 and getattr(block, "shortcut", "bottleneck") == "expansion":
            raise ValueError(
                f"expansion groups {k} for block {index}: the memory-efficient path needs the expanded tensor "
                "never whole, and shortcut='expansion' hands it whole to the next block; use "
                "shortcut='bottleneck' or 'none', or expansion_groups=None"
            )
    for block, k in zip(blocks, chosen):
        block.expansion_groups = k
    return chosen


@contextmanager
def memory_efficient_inference(
    model: nn.Module, groups: int | Sequence[int] | Mapping[int, int] = 4
) -> Iterator[nn.Module]:
    """``with memory_efficient_inference(model, 4): model(x)``; restores the previous choice after."""
    blocks = _blocks(model)
    previous = [getattr(b, "expansion_groups", 1) for b in blocks]
    set_expansion_groups(model, groups)
    try:
        yield model
    finally:
        for block, k in zip(blocks, previous):
            block.expansion_groups = k


@torch.no_grad()
def largest_activations(
    model: nn.Module, images: Tensor, bytes_per_element: int = 2
) -> dict[tuple[int, int], dict[str, int]]:
    """Paper Table 3: per spatial resolution, the largest tensor that must be materialised, in bytes
    (16-bit floats by default), on the standard path and on the memory-efficient one (where an
    expanded tensor only exists one group at a time). Measured with hooks on one forward."""
    records: dict[tuple[int, int], dict[str, int]] = {}

    def note(shape, standard: int, efficient: int) -> None:
        entry = records.setdefault(tuple(shape[-2:]), {"standard": 0, "memory_efficient": 0})
        entry["standard"] = max(entry["standard"], standard * bytes_per_element)
        entry["memory_efficient"] = max(entry["memory_efficient"], efficient * bytes_per_element)

    handles = []
    blocks = set(map(id, _blocks(model)))
    for module in model.modules():
        if id(module) in blocks:

            def hook(block, inputs, output):
                (x,) = inputs
                k = max(1, getattr(block, "expansion_groups", 1))
                per_image = x[0].numel()
                note(x.shape, per_image, per_image)
                note(output.shape, output[0].numel(), output[0].numel())
                hidden_in = block.hidden_channels * x.shape[-2] * x.shape[-1]
                hidden_out = block.hidden_channels * output.shape[-2] * output.shape[-1]
                if block.expand is not None:
                    note(x.shape, hidden_in, -(-hidden_in // k))
                note(output.shape, hidden_out, -(-hidden_out // k))

            handles.append(module.register_forward_hook(hook))
    try:
        model.eval()(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return dict(sorted(records.items(), key=lambda item: -item[0][0] * item[0][1]))
