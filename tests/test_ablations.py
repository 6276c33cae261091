"""The paper's ablations (section 6.4, Figure 6) as backbone switches: a ReLU6 after the projection,
and the residual connections between expansions or none. Same parameters as the default network;
the default itself unchanged, bit for bit."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn

from vision_mnv2.complexity import count_macs, count_parameters
from vision_mnv2.models import (
    InvertedResidual,
    MobileNetV2Backbone,
    deeplabv3_mobilenet_v2,
    mobilenet_v2,
    set_expansion_groups,
    ssdlite_mobilenet_v2,
)

from .helpers import compose_config, realistic_batch_norm

VARIANTS = list(itertools.product(("linear", "relu6"), ("bottleneck", "expansion", "none")))


def _blocks(backbone: MobileNetV2Backbone) -> list[InvertedResidual]:
    return [m for m in backbone.features if isinstance(m, InvertedResidual)]


def test_default_backbone_is_torchvision_bit_for_bit(tmp_path):
    """The default switches compute exactly what they did before: torchvision's features from its
    weight file (every key of the file fits every key of the model, none left over), and equal, not
    merely close, outputs."""
    torch.manual_seed(0)
    reference = realistic_batch_norm(torchvision.models.mobilenet_v2(weights=None))
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    model = mobilenet_v2(weights=path, bottleneck_activation="linear", shortcut="bottleneck").eval()
    assert len(model.state_dict()) == len(reference.state_dict())
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(model.backbone(x)["layer19"], reference.features(x))


@pytest.mark.parametrize("activation, shortcut", VARIANTS)
def test_variants_have_the_default_parameters_and_shapes(activation, shortcut):
    """Neither ablation adds or removes a parameter: every variant has the default's state-dict
    layout (so it loads the same weights), and every tap keeps its shape."""
    default = realistic_batch_norm(MobileNetV2Backbone(out_features=("layer15/expansion", "layer18", "layer19")))
    variant = MobileNetV2Backbone(
        out_features=("layer15/expansion", "layer18", "layer19"), bottleneck_activation=activation, shortcut=shortcut
    )
    assert {k: v.shape for k, v in variant.state_dict().items()} == {
        k: v.shape for k, v in default.state_dict().items()
    }
    assert count_parameters(variant) == count_parameters(default) == 2_223_872
    variant.load_state_dict(default.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got, want = variant.eval()(x), default(x)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert want["layer19"].shape == (1, 1280, 2, 3) and want["layer15/expansion"].shape == (1, 576, 4, 6)
    difference = (got["layer18"] - want["layer18"]).abs().max() / want["layer18"].abs().max()
    if (activation, shortcut) == ("linear", "bottleneck"):
        assert difference == 0
    else:
        assert difference > 0.01, "the switch must change what is computed"


@pytest.mark.parametrize("builder, size", [(mobilenet_v2, 224), (ssdlite_mobilenet_v2, 320)])
def test_task_models_take_the_switches_at_the_same_size(builder, size):
    default = builder()
    params, macs = count_parameters(default), count_macs(default, (size, size))
    for activation, shortcut in VARIANTS[1:]:
        variant = builder(bottleneck_activation=activation, shortcut=shortcut)
        # The adds of a shortcut are not multiply-adds: the count is the same too.
        assert count_parameters(variant) == params and count_macs(variant, (size, size)) == macs


def test_deeplab_takes_the_switches():
    model = deeplabv3_mobilenet_v2(num_classes=3, aspp=False, bottleneck_activation="relu6", shortcut="none")
    blocks = _blocks(model.backbone)
    assert not any(b.use_residual for b in blocks)
    assert all(isinstance(b.project[-1], nn.ReLU6) for b in blocks)
    assert count_parameters(model) == count_parameters(deeplabv3_mobilenet_v2(num_classes=3, aspp=False))


def test_relu6_bottleneck_clamps_every_block_output():
    backbone = MobileNetV2Backbone(out_features=[f"layer{i}" for i in range(2, 19)], bottleneck_activation="relu6")
    for block in _blocks(backbone):
        assert [type(m) for m in block.project] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6]
    with torch.no_grad():
        taps = backbone.eval()(torch.randn(1, 3, 64, 64))
    for name, tap in taps.items():
        # Where the bottleneck shortcut adds the (non-negative) input, the sum may exceed 6.
        assert tap.min() >= 0, name
    # A block without a shortcut: exactly relu6 of the linear projection.
    block = InvertedResidual(16, 24, stride=2, expand_ratio=6, bottleneck_activation="relu6").eval()
    linear = InvertedResidual(16, 24, stride=2, expand_ratio=6).eval()
    linear.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(block(x), torch.clamp(linear(x), 0, 6))


def test_no_shortcut_removes_every_residual():
    blocks = _blocks(MobileNetV2Backbone(shortcut="none"))
    assert len(blocks) == 17 and not any(b.use_residual or b.expansion_shortcut for b in blocks)
    # Without a shortcut a block is exactly projection(depthwise(expansion(x))).
    block = InvertedResidual(24, 24, stride=1, expand_ratio=6, shortcut="none").eval()
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), block.project(block.depthwise(block.expand(x))))


def test_expansion_shortcut_connects_equal_expansions():
    """Between expansions: the 10 adds sit after the 10 blocks that have the paper's shortcut (stride
    1, equal channels, so equal 6x expansions), each received by the next block."""
    default = _blocks(MobileNetV2Backbone())
    blocks = _blocks(MobileNetV2Backbone(shortcut="expansion"))
    senders = [i for i, b in enumerate(default) if b.use_residual]
    receivers = [i for i, b in enumerate(blocks) if b.expansion_shortcut]
    assert len(senders) == 10 and receivers == [i + 1 for i in senders]
    assert not any(b.use_residual for b in blocks)
    for i in receivers:
        assert blocks[i - 1].hidden_channels == blocks[i].hidden_channels and blocks[i - 1].stride == 1

    # What one receiving block computes, by hand: its expansion plus the previous one, then
    # depthwise and projection; no bottleneck shortcut.
    first = InvertedResidual(24, 24, stride=1, expand_ratio=6, shortcut="expansion").eval()
    second = InvertedResidual(24, 32, stride=2, expand_ratio=6, shortcut="expansion", expansion_shortcut=True).eval()
    realistic_batch_norm(first), realistic_batch_norm(second, seed=1)
    x = torch.randn(1, 24, 16, 16)
    with torch.no_grad():
        y, e1 = first.forward_with_expansion(x)
        assert torch.equal(y, first.project(first.depthwise(first.expand(x))))
        z, e2 = second.forward_with_expansion(y, e1)
        assert torch.equal(e2, second.expand(y) + e1)
        assert torch.equal(z, second.project(second.depthwise(e2)))
    with pytest.raises(ValueError, match="previous_expansion"):
        second(y)


def test_expansion_shortcut_trains():
    model = mobilenet_v2(num_classes=4, shortcut="expansion")
    loss = nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_memory_efficient_inference_with_the_switches():
    torch.manual_seed(0)
    model = realistic_batch_norm(mobilenet_v2(bottleneck_activation="relu6")).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        reference = model(x)
        set_expansion_groups(model, 3)
        assert torch.allclose(model(x), reference, atol=1e-4)
    with pytest.raises(ValueError, match="shortcut='expansion'"):
        set_expansion_groups(mobilenet_v2(shortcut="expansion"), 2)


def test_invalid_switches_fail_clearly():
    with pytest.raises(ValueError, match="bottleneck_activation must be one of"):
        MobileNetV2Backbone(bottleneck_activation="relu")
    with pytest.raises(ValueError, match="shortcut must be one of"):
        mobilenet_v2(shortcut="dense")
    with pytest.raises(ValueError, match="expansion_shortcut needs"):
        InvertedResidual(16, 16, stride=1, expand_ratio=1, shortcut="expansion", expansion_shortcut=True)


def test_switches_from_the_command_line(tmp_path):
    cfg = compose_config("train", ["backbone.bottleneck_activation=relu6", "backbone.shortcut=expansion"], tmp_path)
    model = instantiate(cfg.model)
    blocks = _blocks(model.backbone)
    assert sum(b.expansion_shortcut for b in blocks) == 10 and isinstance(blocks[0].project[-1], nn.ReLU6)
