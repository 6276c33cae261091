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
        (
            ["task=classification", "+model.width_mult=0.5"],
            "backbone.width_mult and model.width_mult set the same argument",
        ),
    ],
)
def test_settings_the_network_does_not_take_are_errors(tmp_path, overrides, message):
    cfg = compose_config("train", overrides, tmp_path)
    with pytest.raises(Exception, match=message):
        instantiate(cfg.model)


# The model and backbone sections that runs recorded before the groups were passed whole
# (dae899d and earlier): the model named its builder and copied the groups' values in.
WIRING_BEFORE = """
  weights: null
  backbone_weights: ${backbone.weights}
  normalization: imagenet
  freeze_backbone: false
  frozen_bn: false
  num_classes: ${data.num_classes}
  width_mult: ${backbone.width_mult}
  bottleneck_activation: ${backbone.bottleneck_activation}
  shortcut: ${backbone.shortcut}
  expansion_groups: null"""
BACKBONE_BEFORE = """
backbone:
  name: mobilenet_v2
  width_mult: WIDTH
  weights: null
  bottleneck_activation: linear
  shortcut: bottleneck"""
SSDLITE_BEFORE = f"""
model:{WIRING_BEFORE}
  _target_: vision_mnv2.models.ssdlite_${{backbone.name}}
  image_size: ${{data.image_size}}
  score_thresh: ${{head.score_thresh}}
  nms_thresh: ${{head.nms_thresh}}
  detections_per_img: ${{head.detections_per_img}}
  classification_loss: ${{head.classification_loss}}
  anchor_generator: ${{head.anchor_generator}}
  batch_norm_momentum: ${{head.batch_norm_momentum}}
  batch_norm_eps: ${{head.batch_norm_eps}}{BACKBONE_BEFORE}
  output_stride: 32
"""
DEEPLAB_BEFORE = f"""
model:{WIRING_BEFORE}
  _target_: vision_mnv2.models.deeplabv3_${{backbone.name}}
  output_stride: ${{backbone.output_stride}}
  aspp: ${{head.aspp}}{BACKBONE_BEFORE}
  output_stride: 16
"""


@pytest.mark.parametrize("task, before", [("ssdlite", SSDLITE_BEFORE), ("deeplabv3", DEEPLAB_BEFORE)])
def test_runs_recorded_in_the_earlier_layout_still_resume(tmp_path, task, before):
    """ckpt_path=last compares what a run was, not how the configs were wired: a run recorded
    before the groups were passed whole differs from today's same settings in nothing, and a real
    difference (another width) still counts."""
    from omegaconf import OmegaConf

    from tasks.resume import config_differences, in_composed_layout

    today = compose_config("train", [f"task={task}"], tmp_path)
    sections = OmegaConf.create({"model": today.model, "backbone": today.backbone})
    for width, expected in (("1.0", []), ("0.5", ["backbone.width_mult: 0.5 -> 1.0"])):
        recorded = OmegaConf.to_container(OmegaConf.create(before.replace("WIDTH", width)))
        assert config_differences(OmegaConf.create(in_composed_layout(recorded)), sections) == expected
    assert in_composed_layout(OmegaConf.to_container(sections)) == OmegaConf.to_container(sections)


def test_init_from_inherits_into_the_group_that_holds_the_setting(tmp_path):
    """init_from's input conventions land where the command's config keeps them: a head setting
    given on the command line is the user's and is kept, one not given is taken from the weights."""
    from tasks.checkpoint_config import inherit_from_init
    from vision_mnv2.checkpoint import save_model
    from vision_mnv2.models import deeplabv3_mobilenet_v2
    from vision_mnv2.pipelines import describe

    source = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, align_corners=True, normalization="tf")
    ckpt = save_model(tmp_path / "seg.ckpt", source, describe("segmentation", source, {"pad_to": 64}))
    for given, expected in (([], True), (["+head.align_corners=false"], False)):
        overrides = ["task=deeplabv3", f"init_from={ckpt}", *given]
        cfg = compose_config("train", overrides, tmp_path / str(len(given)))
        taken = inherit_from_init(cfg, overrides)
        assert ("align_corners" in taken) == (not given) and taken["width_mult"] == 0.35
        args = instantiate(cfg.model).build_config["args"]
        assert (
            args["align_corners"] is expected and args["width_mult"] == 0.35 and args["normalization"]["name"] == "tf"
        )
