"""Semantic segmentation outside training: any image size, logits at the input size, argmax mask,
multi-scale + flip voting, mIoU."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from ..complexity import count_parameters
from ..data.voc import write_mask
from ..models.deeplabv3 import multi_scale_probabilities
from ..visualize import draw_mask_overlay
from .base import ExportedNetwork, Normalized, Pipeline, iterate, to_tensor

__all__ = ["SegmentationPipeline"]

log = logging.getLogger(__name__)


# Photos are brought to the model's working size before the network, so its cost does not grow with
# the photo. A model whose description names no working size (checkpoints written before they did)
# runs photos as they are, up to this longer side.
MAX_UNSIZED_SIDE = 2048
# Class scores are mapped back to the photo in strips of about this many values, so that a huge
# photo never holds all its per-class scores at once.
STRIP_VALUES = 1 << 24


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 RGB resized with PIL's bilinear filter, which widens with the scale factor when shrinking
    (no aliasing), as DeepLab's demo resizes photos."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def upsampled_labels(logits: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """``argmax`` over classes of ``logits`` (C x h x w) bilinearly resized to ``size``, computed in
    strips of rows: the same labels as ``F.interpolate(logits, size).argmax(0)`` (up to ties), in
    memory that does not grow with the number of classes times the output size. uint8 labels when
    there are at most 256 classes."""
    height, width = size
    classes, in_height, in_width = logits.shape
    if (in_height, in_width) == (height, width):
        return logits.argmax(0).to(torch.uint8 if classes <= 256 else torch.int64)
    rows = max(1, STRIP_VALUES // max(1, classes * width))
    # grid_sample's normalised coordinates of each output pixel's source position, the mapping
    # F.interpolate(mode="bilinear") uses (border padding clamps as it does).
    if align_corners:
        xs = torch.linspace(-1.0, 1.0, width) if width > 1 else torch.zeros(1)
        ys = torch.linspace(-1.0, 1.0, height) if height > 1 else torch.zeros(1)
    else:
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) * 2 / width - 1
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) * 2 / height - 1
    labels = torch.empty(height, width, dtype=torch.uint8 if classes <= 256 else torch.int64)
    source = logits[None].float()
    for top in range(0, height, rows):
        strip_ys = ys[top : top + rows]
        grid = torch.stack(torch.meshgrid(strip_ys, xs, indexing="ij")[::-1], dim=-1)[None]
        strip = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=align_corners)
        labels[top : top + len(strip_ys)] = strip[0].argmax(0)
    return labels


class SegmentationPipeline(Pipeline):
    """A photo of any size in, one class index per pixel of the photo out.

    The photo is first brought to the model's *working size* (``preprocessing.resize_size``): its
    longer side resized to the size the model was evaluated at, as DeepLab's demo resizes to 513,
    then padded at the bottom and right to ``pad_to`` (DeepLab's 513 x 513) with the normalisation
    mean. The network's class scores, the padding cut off, are resized back to the photo's pixels.
    So a photo of 128 px or of 8000 px is seen at the scale the model learned, in bounded memory.

    ``scales`` / ``flip``: the paper's multi-scale + mirrored evaluation, averaging class
    probabilities over resized (and flipped) copies (works with exported graphs too, which take any
    size).
    """

    task = "segmentation"
    config_name = "deeplabv3"
    headline_metric = "mIoU"
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
    def options_from_training(cls, module_settings: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "scales": list(module_settings.get("eval_scales", [1.0])),
            "flip": bool(module_settings.get("eval_flip", False)),
        }

    @classmethod
    def preprocessing(cls, builder_args: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
        """``hints``: ``pad_to`` (the evaluation's padded size, DeepLab's 513) and ``resize_size``
        (the longer side of the images it was evaluated at); the working size is ``resize_size``,
        else the padded size."""
        pad = hints.get("pad_to")
        if isinstance(pad, int):
            pad = [pad, pad]
        size = hints.get("resize_size") or (max(pad) if pad else None)
        return {
            "resize": "longer_side" if size else "none",
            "resize_size": int(size) if size else None,
            "pad_to": [int(p) for p in pad] if pad else None,
            "input_size": None,
            "interpolation": "bilinear",
        }

    @classmethod
    def working_size_of(cls, preprocessing: dict[str, Any]) -> int | None:
        """The longer side photos are resized to (descriptions written before it was recorded: the
        padded size they were evaluated at, else none)."""
        size = preprocessing.get("resize_size") or (
            max(preprocessing["pad_to"]) if preprocessing.get("pad_to") else None
        )
        return int(size) if size else None

    @classmethod
    def hints_of(cls, preprocessing: dict[str, Any], size: int | None) -> dict[str, Any]:
        # Another working size pads to it too, when the model pads (DeepLab resizes and pads to 513).
        pad = preprocessing.get("pad_to")
        return {"resize_size": size, "pad_to": [size, size] if pad and size else pad}

    @property
    def working_size(self) -> int | None:
        return self.working_size_of(self.meta.preprocessing)

    def preprocess(self, image: np.ndarray, resize: bool = True) -> tuple[Tensor, dict[str, Any]]:
        """``resize=False``: the image at its own size, padded as evaluation pads (how the model is
        scored on a dataset, as training's validation did)."""
        height, width = image.shape[:2]
        target = self.working_size or (MAX_UNSIZED_SIDE if max(height, width) > MAX_UNSIZED_SIDE else None)
        if resize and target and max(height, width) != target:
            scale = target / max(height, width)
            image = _resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
        tensor = to_tensor(image)
        valid = tuple(tensor.shape[1:])
        pad = self.meta.preprocessing.get("pad_to")
        if pad:
            tensor = self._pad(tensor, max(valid[0], int(pad[0])), max(valid[1], int(pad[1])))
        return tensor, {"size": (height, width), "valid": valid}

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

    def fixed_size_options(self, height: int, width: int) -> dict[str, Any]:
        # Photos are padded to the export's example size; without dynamic sizes that is the only one.
        self.meta.preprocessing["pad_to"] = [int(height), int(width)]
        return {"dynamic_size": False}

    def executorch_dynamic_shapes(self, dynamic_size: bool = True, **options: Any):
        if not dynamic_size:
            return None
        if self.meta.builder_args.get("tf_padding"):
            # TF "SAME" padding is computed from the input size (max(), floor division); ExecuTorch
            # cannot hold that symbolic arithmetic (its verifier rejects sym_max), so such networks
            # (Google's DeepLab) are exported at their padded size, pad_to (513 for DeepLab).
            height, width = self.example_input(1).shape[2:]
            log.warning(
                "segmentation with TF padding: the ExecuTorch program takes %d x %d images only "
                "(photos are resized and padded to it)",
                height,
                width,
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
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        align_corners = bool(self.meta.builder_args.get("align_corners", False))
        predictions = []
        for scores, context in zip(outputs[0], contexts):
            valid_height, valid_width = context.get("valid", context["size"])
            labels = upsampled_labels(scores[:, :valid_height, :valid_width], context["size"], align_corners)
            predictions.append({"mask": labels.to(dtype)})
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

    def extra_files(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """The class-index mask as a VOC palette PNG (what VOC tools and this project's loaders read)."""
        return {"_mask.png": lambda path: write_mask(path, prediction["mask"].numpy())}

    def summary(self, prediction: dict[str, Any], **options: Any) -> str:
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
            tensor, context = self.preprocess(image, resize=False)
            (prediction,) = self.postprocess(self.run(tensor[None]), [context])
            confusion.update(prediction["mask"].long()[None], torch.from_numpy(mask.astype(np.int64))[None])
        scores = segmentation_scores(confusion.compute())
        return {k: v for k, v in scores.items() if not k.startswith("IoU/")}
