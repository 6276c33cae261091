"""Transfer learning: weights carried over between tasks, torchvision weights by name, freezing."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torchvision
from hydra.errors import InstantiationException

from tasks.runner import build, train
from vision_mnv2.models import (
    WeightsError,
    deeplabv3_mobilenet_v2,
    mobilenet_v2,
    resolve_weights,
    ssdlite_mobilenet_v2,
    transfer_weights,
)

from .helpers import compose_config, learning_rates_by_part, tiny_classification_overrides, train_with_callbacks


def _backbone_state(model) -> dict[str, torch.Tensor]:
    for module in model.modules():
        if type(module).__name__ == "MobileNetV2Backbone":
            return module.state_dict()
    raise AssertionError("no backbone")


def test_torchvision_weights_by_name_come_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    with pytest.raises(WeightsError, match=f"put it at {expected}"):
        mobilenet_v2(weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"):
        resolve_weights("MobileNet_V2_Weights.IMAGENET1K_V1")
    reference = torchvision.models.mobilenet_v2().eval()
    expected.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), expected)
    model = mobilenet_v2(weights="IMAGENET1K_V1").eval()
    images = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model(images), reference(images), atol=1e-5)
    assert resolve_weights("some/file.pt").name == "file.pt", "other strings are paths"


def test_transfer_between_tasks_reports_what_was_loaded(tmp_path):
    source = ssdlite_mobilenet_v2(num_classes=3, width_mult=0.5, image_size=128)
    path = tmp_path / "det.pt"
    torch.save(source.state_dict(), path)

    same = ssdlite_mobilenet_v2(num_classes=3, width_mult=0.5, image_size=128)
    report = transfer_weights(same, path)
    assert not report.mismatched and not report.not_in_file
    for key, value in same.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key

    other_classes = ssdlite_mobilenet_v2(num_classes=5, width_mult=0.5, image_size=128)
    fresh = {k: v.clone() for k, v in other_classes.state_dict().items()}
    report = transfer_weights(other_classes, path)
    assert report.mismatched and all(k.startswith("head.classification_head") for k in report.mismatched)
    state = other_classes.state_dict()
    assert all(torch.equal(state[k], fresh[k]) for k in report.mismatched), "other classes: head re-initialised"
    assert any(k.startswith("head.regression_head") for k in report.other), "box regression carries over"
    assert "re-initialised" in report.summary()

    segmenter = deeplabv3_mobilenet_v2(num_classes=2, width_mult=0.5)
    report = transfer_weights(segmenter, path)
    assert report.backbone == len(_backbone_state(segmenter)) and not report.other
    for key, value in _backbone_state(segmenter).items():
        assert torch.equal(value, _backbone_state(source)[key]), key
    with pytest.raises(WeightsError, match="shape mismatch"):
        transfer_weights(deeplabv3_mobilenet_v2(num_classes=2, width_mult=1.0), path)


def test_freezing_stages_and_batch_norm():
    model = deeplabv3_mobilenet_v2(num_classes=3, width_mult=0.35, freeze_backbone=2, frozen_bn=True)
    features = model.backbone.features
    assert not any(p.requires_grad for layer in features[:4] for p in layer.parameters())
    assert all(p.requires_grad for p in features[4].parameters()), "stage 3 onwards trains"
    model.train()
    batch_norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not any(m.training for m in batch_norms) and model.aspp.training
    before = [m.running_mean.clone() for m in batch_norms]
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, batch_norms)), "statistics stay fixed"
    assert features[4].expand[0].weight.grad is not None and features[0][0].weight.grad is None

    whole = mobilenet_v2(width_mult=0.35, num_classes=4, freeze_backbone=True)
    assert not any(p.requires_grad for p in whole.backbone.parameters())
    assert all(p.requires_grad for p in whole.classifier.parameters())
    with pytest.raises(ValueError, match="freeze_backbone"):
        mobilenet_v2(freeze_backbone=9)


def test_classification_checkpoint_starts_an_ssdlite_run(tiny_cls_root, tmp_path):
    cls_cfg = compose_config(
        "train", tiny_classification_overrides(tiny_cls_root) + ["trainer.max_epochs=1"], tmp_path / "cls"
    )
    checkpoint = train(cls_cfg)["last_checkpoint"]
    classifier_backbone = {
        k.removeprefix("model.backbone."): v
        for k, v in torch.load(checkpoint, weights_only=True)["state_dict"].items()
        if k.startswith("model.backbone.")
    }
    det_cfg = compose_config(
        "train",
        [
            "task=ssdlite",
            "backbone.width_mult=0.35",
            f"init_from={checkpoint}",
            "data.generate.train_images=4",
            "data.generate.val_images=2",
        ],
        tmp_path / "det",
    )
    _, module, _ = build(det_cfg, with_loggers=False)
    detector_backbone = module.model.backbone.backbone.state_dict()
    assert detector_backbone.keys() == classifier_backbone.keys()
    for key, value in detector_backbone.items():
        assert torch.equal(value, classifier_backbone[key]), key


def test_backbone_learning_rate_multiplier(tmp_path):
    cfg = compose_config(
        "train", ["task=deeplabv3", "backbone.width_mult=0.35", "module.backbone_lr_mult=0.1"], tmp_path
    )
    _, module, _ = build(cfg, with_loggers=False)
    rates, in_groups = learning_rates_by_part(module)
    assert sorted(rates["backbone"]) == pytest.approx([cfg.optimizer.lr * 0.1])
    assert sorted(rates["heads"]) == pytest.approx([cfg.optimizer.lr])
    assert in_groups == len(list(module.model.parameters()))


class _ParametersAfterEachStep(L.Callback):
    """The backbone's and the rest's parameters, flattened, at the start and after every step, and
    whether the optimizer holds state (momentum, Adam's moments) for any backbone parameter."""

    def __init__(self) -> None:
        self.backbone: list[torch.Tensor] = []
        self.heads: list[torch.Tensor] = []
        self.backbone_state: list[bool] = []

    def _record(self, trainer, module) -> None:
        backbone = list(module.model.backbone.parameters())
        ids = {id(p) for p in backbone}
        self.backbone.append(torch.cat([p.detach().flatten() for p in backbone]).clone())
        heads = [p.detach().flatten() for p in module.model.parameters() if id(p) not in ids]
        self.heads.append(torch.cat(heads).clone())
        state = trainer.optimizers[0].state
        self.backbone_state.append(any(len(state.get(p, {})) > 0 for p in backbone))

    def on_train_start(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._record(trainer, pl_module)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_heads_only_phase_leaves_the_backbone_as_it_was(optimizer, tiny_cls_root, tmp_path):
    """module.head_only_fraction=0.5 of a 6-step budget: 3 steps train the classifier alone (its
    gradients reach neither the backbone's weights nor the optimizer's momentum or moments, which
    weight decay and a rate of 0 would not ensure), then the backbone joins."""
    overrides = tiny_classification_overrides(tiny_cls_root) + [
        f"optimizer={optimizer}",
        "optimizer.weight_decay=1e-4",
        "module.head_only_fraction=0.5",
        "module.warmup_epochs=0",
        "trainer.max_steps=6",
    ]
    recorder = _ParametersAfterEachStep()
    train_with_callbacks(compose_config("train", overrides, tmp_path), recorder)
    assert len(recorder.backbone) == 7
    for step in (1, 2, 3):
        assert torch.equal(recorder.backbone[step], recorder.backbone[0]), f"the backbone moved at step {step}"
        assert not recorder.backbone_state[step], f"optimizer state for the backbone at step {step}"
        assert not torch.equal(recorder.heads[step], recorder.heads[step - 1]), f"the head stood at step {step}"
    for step in (4, 5, 6):
        assert not torch.equal(recorder.backbone[step], recorder.backbone[step - 1]), f"backbone still at {step}"
        assert recorder.backbone_state[step]
    whole_run = compose_config("train", [*overrides, "module.head_only_fraction=1.0"], tmp_path / "whole")
    with pytest.raises(InstantiationException, match="head_only_fraction must be in"):
        build(whole_run, with_loggers=False)


def test_finetune_presets_compose(tmp_path):
    det = compose_config(
        "train",
        ["experiment=finetune_ssdlite_custom", "data.root=/x", "data.num_classes=3", "init_from=IMAGENET1K_V1"],
        tmp_path,
    )
    assert det.module.init_from == "IMAGENET1K_V1" and det.model.freeze_backbone == 2 and det.model.frozen_bn
    assert det.module.backbone_lr_mult == 0.1 and det.model.num_classes == 3 and det.data.image_size == 320
    seg = compose_config(
        "train", ["experiment=finetune_deeplabv3_custom", "data.root=/x", "data.num_classes=4"], tmp_path
    )
    assert seg.model.num_classes == 4 and seg.module.scheduler_interval == "step" and seg.data.eval_pad_size == 513


@pytest.mark.parametrize("batch, frozen", [(16, False), (32, False), (8, True), (4, True)])
def test_classification_preset_batch_norm_adapts_from_a_batch_of_16(tmp_path, tiny_cls_root, batch, frozen):
    """The classification preset's batch-norm policy follows the per-device batch: statistics adapt
    to the photos at 16 and more, stay the pretrained ones below; the built network does so."""
    overrides = ["experiment=finetune_classification_custom", f"data.root={tiny_cls_root}", "data.num_classes=4"]
    overrides += [f"data.batch_size={batch}", "backbone.width_mult=0.35", "data.image_size=64"]
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.model.frozen_bn is frozen
    _, module, _ = build(cfg, with_loggers=False)
    module.model.train()
    backbone = module.model.backbone
    trainable = [layer for i, layer in enumerate(backbone.features) if i not in getattr(backbone, "frozen_layers", ())]
    norms = [m for layer in trainable for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training is not frozen for m in norms)
    # An explicit setting still wins.
    assert compose_config("train", [*overrides, "model.frozen_bn=true"], tmp_path).model.frozen_bn is True


def test_classification_preset_freezes_the_stem_and_first_two_stages(tmp_path, tiny_cls_root):
    """The classification fine-tuning preset, as built: the stem and first two stages frozen (no
    gradients, in no optimizer group, their batch-norm statistics ImageNet's), the rest of the
    backbone at SGD's 0.001 and the new classifier layer at 0.01. Freezing gained 1.4 points of
    top-1 over 5 seeds on real photos (docs/BENCHMARKS.md)."""
    overrides = ["experiment=finetune_classification_custom", f"data.root={tiny_cls_root}", "data.num_classes=4"]
    cfg = compose_config("train", [*overrides, "backbone.width_mult=0.35", "data.image_size=64"], tmp_path)
    _, module, _ = build(cfg, with_loggers=False)
    module.model.train()
    backbone = module.model.backbone
    frozen = [i for i, stage in enumerate(backbone.layer_stages) if stage <= 2]
    assert backbone.frozen_layers == frozen and len(frozen) == 4, "the stem, stage 1 (1 block), stage 2 (2 blocks)"
    for i, layer in enumerate(backbone.features):
        assert all(p.requires_grad is (i not in frozen) for p in layer.parameters()), i
        norms = [m for m in layer.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and all(m.training is (i not in frozen) for m in norms), i
    rates, in_groups = learning_rates_by_part(module)
    assert sorted(rates["backbone"]) == pytest.approx([1e-3]) and sorted(rates["heads"]) == pytest.approx([1e-2])
    assert in_groups == sum(p.requires_grad for p in module.model.parameters())
