"""The task's network composed from the backbone and head groups, each passed whole
(vision_mnv2.models.compose_model, configs/task_defaults.yaml): the same network as the builder
called directly, every group setting reaching the builder, nothing dropped unseen."""

import pytest
import torch
from hydra.utils import instantiate

from tasks.cli import compose_config
from vision_mnv2.models import compose_model, ssdlite_mobilenet_v2


def test_composed_network_is_the_builders_own():
    torch.manual_seed(0)
    composed = compose_model(
        "ssdlite_mobilenet_v2",
        backbone={"name": "mobilenet_v2", "width_mult": 0.35, "output_stride": None, "weights": None},
        head={"score_thresh": 0.2, "anchor_generator": "tf", "batch_norm_eps": 0.001},
        num_classes=3,
        image_size=160,
    ).eval()
    torch.manual_seed(0)
    direct = ssdlite_mobilenet_v2(
        num_classes=3, width_mult=0.35, image_size=160, score_thresh=0.2, anchor_generator="tf", batch_norm_eps=0.001
    ).eval()
    assert composed.build_config == direct.build_config
    assert composed.build_config["args"]["width_mult"] == 0.35 and composed.score_thresh == 0.2
    for (key, ours), (_, theirs) in zip(composed.state_dict().items(), direct.state_dict().items(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "task, overrides, argument, value",
    [
        # A setting the task file never names reaches the builder: the groups own their keys.
        ("ssdlite", ["+head.anchor_min_scale=0.15"], "anchor_min_scale", 0.15),
        ("ssdlite", ["backbone.width_mult=0.5"], "width_mult", 0.5),
        ("deeplabv3", ["head.aspp=true", "backbone.output_stride=8"], "output_stride", 8),
        ("classification", ["head.dropout=0.5", "backbone.shortcut=none"], "shortcut", "none"),
        ("classification", ["backbone=mobilenet_v1", "+backbone.min_depth=16"], "min_depth", 16),
    ],
)
def test_group_settings_reach_the_builder(tmp_path, task, overrides, argument, value):
    cfg = compose_config("train", [f"task={task}", *overrides], tmp_path)
    model = instantiate(cfg.model)
    assert model.build_config["args"][argument] == value
    # The network's own default where the backbone leaves the output stride unset.
    assert model.build_config["args"].get("output_stride", 32) in (8, 16, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=ssdlite", "backbone.output_stride=16"], "backbone.output_stride=16: the network ssdlite_mobilenet_v2"),
        (["task=deeplabv3", "+head.dropout=0.1"], "head.dropout=0.1: the network deeplabv3_mobilenet_v2"),
        (["task=classification", "+model.width_mult=0.5"], "backbone.width_mult and model.width_mult are both set"),
    ],
)
def test_settings_the_network_does_not_take_are_errors(tmp_path, overrides, message):
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(Exception, match=message):
        instantiate(cfg.model)
