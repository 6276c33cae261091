"""Semantic segmentation outside training: any image size, logits at the input size, argmax mask,
multi-scale + flip voting, mIoU."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..complexity import count_parameters
from ..data.voc import write_mask
from ..models.deeplabv3 import multi_scale_probabilities
from ..visualize import draw_mask_overlay
from .base import ExportedNetwork, Normalized, Pipeline, iterate, to_tensor

__all__ = ["SegmentationPipeline"]

log = logging.getLogger(__name__)


class SegmentationPipeline(Pipeline):
    """The whole image (any size) in, one class index per pixel out. ``pad_to`` (from the training
    data's evaluation, e.g. DeepLab's 513) pads smaller images at the bottom and right with the
    normalisation mean, as evaluation did; the padding is cut off the prediction.

    ``scales`` / ``flip``: the paper's multi-scale + mirrored evaluation, averaging class
    probabilities over resized (and flipped) copies (works with exported graphs too, which take any
    size).
    """

    task = "segmentation"
    reference_size = 513
    reference_classes = 21
    export_option_names = ("dynamic_size",)

    @classmethod
    def reference(cls, image_size: int | None = None) -> tuple[str, nn.Module, int, int]:
        from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large  # noqa: PLC0415

        model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
        return (
            "torchvision deeplabv3_mobilenet_v3_large",
            Normalized(model),
            count_parameters(model),
            image_size or cls.reference_size,
        )

    def __init__(self, *args, scales: Sequence[float] = (1.0,), flip: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)

    @classmethod
    def preprocessing(cls, builder_args: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
        pad = hints.get("pad_to")
        if isinstance(pad, int):
            pad = [pad, pad]
        return {"resize": "none", "pad_to": list(pad) if pad else None, "input_size": None}

    def preprocess(self, image: np.ndarray) -> tuple[Tensor, dict[str, Any]]:
        tensor = to_tensor(image)
        pad = self.meta.preprocessing.get("pad_to")
        height, width = image.shape[:2]
        if pad:
            tensor = self._pad(tensor, max(height, int(pad[0])), max(width, int(pad[1])))
        return tensor, {"size": (height, width)}

    def _pad(self, tensor: Tensor, height: int, width: int) -> Tensor:
        # The normalisation mean: zero once normalised, as DeepLab pads.
        canvas = (
            torch.tensor(self.normalization.mean, dtype=tensor.dtype).view(3, 1, 1).expand(3, height, width).clone()
        )
        canvas[:, : tensor.shape[1], : tensor.shape[2]] = tensor
        return canvas

    def collate(self, tensors: Sequence[Tensor]) -> Tensor:
        height = max(t.shape[1] for t in tensors)
        width = max(t.shape[2] for t in tensors)
        return torch.stack([self._pad(t, height, width) if t.shape[1:] != (height, width) else t for t in tensors])

    def predict(self, images, batch_size: int = 8) -> list[dict[str, Any]]:
        # Images of different sizes run one by one: padding them to a common size would change what
        # the network sees near their borders, so a prediction would depend on its batch.
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if len({image.shape[:2] for image in images}) > 1 and not self.meta.preprocessing.get("pad_to"):
            return [prediction for image in images for prediction in super().predict([image])]
        return super().predict(images, batch_size)

    def export_module(self, **options: Any) -> nn.Module:
        return ExportedNetwork(self.model)  # normalises its input, upsamples its logits to the input size

    def output_names(self, **options: Any) -> list[str]:
        return ["logits"]

    def dynamic_axes(self, dynamic_size: bool = True, **options: Any) -> dict[str, dict[int, str]]:
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
        return {"images": axes, "logits": axes}

    def executorch_dynamic_shapes(self, dynamic_size: bool = True, **options: Any):
        if not dynamic_size:
            return None
        if self.meta.builder_args.get("tf_padding"):
            # TF "SAME" padding is computed from the input size (max(), floor division); ExecuTorch
            # cannot hold that symbolic arithmetic (its verifier rejects sym_max), so such networks
            # (Google's DeepLab) are exported at their padded size, pad_to (513 for DeepLab).
            log.warning(
                "segmentation with TF padding: the ExecuTorch program takes %s images only",
                self.example_input(1).shape[2:],
            )
            return None
        from torch.export import Dim  # noqa: PLC0415

        return ({2: Dim("height", min=64, max=4096), 3: Dim("width", min=64, max=4096)},)

    def example_input(self, batch: int = 2) -> Tensor:
        pad = self.meta.preprocessing.get("pad_to")
        height, width = pad if pad else (96, 128)  # not square, so the export keeps the two sizes apart
        return torch.rand(batch, 3, int(height), int(width))

    def run(self, batch: Tensor) -> tuple[Tensor, ...]:
        if self.scales == [1.0] and not self.flip:
            return self.runner(batch)

        def network(images: Tensor) -> Tensor:
            return self.runner(images)[0]

        return (multi_scale_probabilities(network, batch, self.scales, self.flip),)

    def postprocess(self, outputs: tuple[Tensor, ...], contexts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        labels = outputs[0].argmax(dim=1)
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        predictions = []
        for mask, context in zip(labels, contexts):
            height, width = context["size"]
            predictions.append({"mask": mask[:height, :width].to(dtype)})
        return predictions

    def records(self, prediction: dict[str, Any], image: dict[str, Any]) -> list[dict[str, Any]]:
        names = self.class_names
        mask = prediction["mask"].numpy()
        counts = np.bincount(mask.ravel(), minlength=self.num_classes) / mask.size
        record = {
            "file": image["file"],
            "mask": f"{image['stem']}_mask.png",
            "class_fraction": {names[c]: round(float(f), 5) for c, f in enumerate(counts) if f > 0},
        }
        if image.get("id") is not None:
            record["image_id"] = image["id"]
        return [record]

    def draw(self, image: np.ndarray, prediction: dict[str, Any], **options: Any) -> dict[str, np.ndarray]:
        return {"_overlay.jpg": draw_mask_overlay(image, prediction["mask"].numpy(), self.num_classes)}

    def write_extra(self, folder: str | os.PathLike, stem: str, prediction: dict[str, Any]) -> None:
        """The class-index mask as a VOC palette PNG (what VOC tools and this project's loaders read)."""
        write_mask(Path(folder) / f"{stem}_mask.png", prediction["mask"].numpy())

    def summary(self, prediction: dict[str, Any]) -> str:
        mask = prediction["mask"]
        present = torch.unique(mask).tolist()
        names = self.class_names
        return "classes " + ", ".join(names[c] for c in present if c < len(names))

    def raw_image(self, dataset: Any, index: int) -> np.ndarray:
        return dataset.load(index)[0]

    def evaluate(self, dataset: Any, limit: int | None = None) -> dict[str, float]:
        """mIoU, pixel and mean class accuracy from one confusion matrix over a VOC-layout split."""
        from ..metrics import segmentation_confusion_matrix, segmentation_scores  # noqa: PLC0415

        if dataset.num_classes != self.num_classes:
            raise ValueError(f"the split has {dataset.num_classes} classes, the model {self.num_classes}")
        confusion = segmentation_confusion_matrix(self.num_classes)
        for index in iterate(range(len(dataset)), limit):
            image, mask = dataset.load(index)
            (prediction,) = self.predict(image)
            confusion.update(prediction["mask"].long()[None], torch.from_numpy(mask.astype(np.int64))[None])
        scores = segmentation_scores(confusion.compute())
        return {k: v for k, v in scores.items() if not k.startswith("IoU/")}
