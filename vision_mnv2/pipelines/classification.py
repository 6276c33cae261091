"""Image classification outside training: centre crop (or the whole photo resized), logits, top-k, accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from ..complexity import count_parameters
from ..data import read_rgb
from ..data.transforms import EVAL_MODES, classification_eval_transform
from .base import ExportedNetwork, Normalized, Pipeline, iterate

__all__ = ["ClassificationPipeline"]


class ClassificationPipeline(Pipeline):
    """Resize the shorter side to ``crop_size / crop_fraction`` and centre crop (``mode`` ``crop``),
    or resize the whole photo to the input size (``mode`` ``resize``); the network's logits,
    softmax; predictions hold ``probabilities`` and the ``top`` k classes."""

    task = "classification"
    config_name = "classification"
    headline_metric = "top1"
    top_k = 5
    reference_size = 224
    reference_classes = 1000
    preprocessing_settings = {
        "mode": f"one of {EVAL_MODES}: the central crop_fraction of the photo, or the whole photo resized",
        "crop_fraction": "the central fraction mode=crop keeps, in (0, 1]",
    }

    @classmethod
    def reference(cls, image_size: int | None = None) -> tuple[str, nn.Module, int, int]:
        from torchvision.models import mobilenet_v2  # noqa: PLC0415

        model = mobilenet_v2()
        return "torchvision mobilenet_v2", Normalized(model), count_parameters(model), image_size or cls.reference_size

    @classmethod
    def preprocessing(cls, builder_args: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
        size = int(hints.get("image_size") or 224)
        fraction = 0.875 if hints.get("crop_fraction") is None else float(hints["crop_fraction"])
        mode = hints.get("mode") or "crop"
        if mode not in EVAL_MODES:
            raise ValueError(f"preprocessing mode is one of {EVAL_MODES}, got {mode!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"preprocessing crop_fraction must be in (0, 1], got {fraction}")
        if mode == "resize":  # the whole photo, aspect ratio not kept
            return {
                "mode": "resize",
                "resize": "whole",
                "resize_size": [size, size],
                "crop": None,
                "input_size": [size, size],
                "interpolation": "bilinear",
            }
        return {
            "mode": "crop",
            "resize": "shorter_side",
            "resize_size": int(round(size / fraction)),
            "crop": "center",
            "crop_fraction": fraction,
            "input_size": [size, size],
            "interpolation": "bilinear",
        }

    @classmethod
    def evaluation_data_settings(cls, preprocessing: dict[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
        # The evaluation transform crops the size the model takes, by the fraction it was trained with.
        size = preprocessing.get("input_size")
        if not size:
            return {}
        fraction = preprocessing.get("crop_fraction", data.get("crop_fraction", 0.875))
        return {
            "image_size": int(size[0]),
            "crop_fraction": float(fraction),
            "eval_preprocessing": preprocessing.get("mode", "crop"),
        }

    @property
    def transform(self):
        if not hasattr(self, "_transform"):
            size = int(self.meta.input_size[0])
            preprocessing = self.meta.preprocessing
            self._transform = classification_eval_transform(
                size, preprocessing.get("crop_fraction", 0.875), preprocessing.get("mode", "crop")
            )
        return self._transform

    def preprocess(self, image: np.ndarray) -> tuple[Tensor, dict[str, Any]]:
        return self.transform(image=image)["image"], {}

    def export_module(self, **options: Any) -> nn.Module:
        return ExportedNetwork(self.model)  # normalises its input itself

    def output_names(self, **options: Any) -> list[str]:
        return ["logits"]

    def postprocess(self, outputs: tuple[Tensor, ...], contexts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        probabilities = outputs[0].float().softmax(dim=1)
        names = self.class_names
        predictions = []
        for row in probabilities:
            top = row.topk(min(self.top_k, row.numel()))
            predictions.append(
                {
                    "probabilities": row,
                    "top": [
                        {"label": int(i), "class": names[int(i)], "score": float(p)}
                        for p, i in zip(top.values, top.indices)
                    ],
                }
            )
        return predictions

    def records(self, prediction: dict[str, Any], image: dict[str, Any]) -> list[dict[str, Any]]:
        record = {"file": image["file"], f"top{self.top_k}": prediction["top"]}
        if image.get("id") is not None:
            record["image_id"] = image["id"]
        return [record]

    def draw(self, image: np.ndarray, prediction: dict[str, Any], **options: Any) -> dict[str, np.ndarray]:
        return {}  # the top classes are in predictions.json; nothing to draw on the image

    def summary(self, prediction: dict[str, Any], **options: Any) -> str:
        return ", ".join(f"{entry['class']} {entry['score']:.3f}" for entry in prediction["top"])

    def raw_image(self, dataset: Any, index: int) -> np.ndarray:
        return read_rgb(dataset.samples[index][0])

    def evaluate(self, dataset: Any, limit: int | None = None) -> dict[str, float]:
        """Top-1 and top-5 accuracy on an ImageNet-layout split (``ImageFolderClassification``)."""
        if self.meta.class_names and list(dataset.classes) != list(self.meta.class_names):
            # Labels are folder indices: other folders would silently score the wrong classes.
            raise ValueError(
                f"the split's class folders {dataset.classes} differ from the model's classes {self.class_names}"
            )
        top1 = top5 = count = 0
        batch: list[np.ndarray] = []
        labels: list[int] = []

        def flush() -> None:
            nonlocal top1, top5, count
            for prediction, label in zip(self.predict(batch), labels):
                ranked = [entry["label"] for entry in prediction["top"]]
                top1 += int(ranked[0] == label)
                top5 += int(label in ranked[:5])
                count += 1
            batch.clear()
            labels.clear()

        for path, label in iterate(dataset.samples, limit):
            batch.append(read_rgb(path))
            labels.append(int(label))
            if len(batch) == 16:
                flush()
        if batch:
            flush()
        return {"top1": top1 / max(1, count), "top5": top5 / max(1, count)}
