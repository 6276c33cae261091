"""Detection augmentation of SSD (Liu et al., 2016): photometric distortion, zoom-out, IoU-constrained
random crop, flip, resize. Boxes are x0, y0, x1, y1 pixels.

Photometric distortion is albumentations' (OpenCV, fast on uint8 images); the geometric steps are
``torchvision.transforms.v2``'s, which move ``tv_tensors.BoundingBoxes`` with the image:
``RandomZoomOut``, ``RandomIoUCrop`` (SSD's sampler; :class:`SSDRandomIoUCrop` draws its trials
together, for speed), ``RandomHorizontalFlip``, ``Resize`` and ``SanitizeBoundingBoxes``, which drops
the boxes the crop marked (centre outside it) and those under a pixel once resized.

torchvision's crop against the hand-written one it replaces (and the SSD paper's Caffe sampler):

- minimum IoUs drawn from 0.0, 0.1, 0.3, 0.5, 0.7, 0.9 and 1.0 (1.0: keep the whole image), which is
  Caffe SSD's sampler; the hand-written crop had no 0.0 (a crop of any overlap);
- crop sides 0.3-1.0 of the image's, drawn independently, width / height in [0.5, 2], whole pixels;
- the IoU is checked against the boxes whose centre lies inside the crop (Caffe and the hand-written
  crop: any box), so the box that meets it is always kept;
- after ``trials`` failed crops it draws another minimum IoU, until one fits or 1.0 is drawn (the
  hand-written crop kept the whole image after its 50 trials);
- boxes whose centre is outside are dropped, the others clipped to the crop, as before.

torchvision's random transforms draw from torch's global generator: each call seeds it from this
transform's own generator (:meth:`SSDTrainTransform.set_random_seed`) and restores it afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["SSDEvalTransform", "SSDRandomIoUCrop", "SSDTrainTransform"]


class SSDRandomIoUCrop(v2.RandomIoUCrop):
    """torchvision's ``RandomIoUCrop`` with the trials for one drawn minimum IoU made all at once.

    The same crops, drawn the same way (sides, aspect, position, centre and IoU tests, another
    minimum IoU after ``trials`` failures) and cut by torchvision's ``transform``; only the order of
    the random numbers differs. torchvision tries one crop at a time, a dozen small tensor
    operations each, and on images of small objects most minimum IoUs cannot be met, so one image
    can cost hundreds of them, enough to hold back the training loader; here each round is a few
    operations on ``trials`` crops together.
    """

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        (boxes,) = [item for item in flat_inputs if isinstance(item, tv_tensors.BoundingBoxes)]
        boxes = F.convert_bounding_box_format(
            boxes.as_subclass(Tensor), boxes.format, tv_tensors.BoundingBoxFormat.XYXY
        )
        centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        while True:
            min_iou = self.options[int(torch.randint(len(self.options), (1,)))]
            if min_iou >= 1.0:  # keep the whole image
                return {}
            scale = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(self.trials, 2)
            crop_w, crop_h = (width * scale[:, 0]).int(), (height * scale[:, 1]).int()
            aspect = crop_w / crop_h
            position = torch.rand(self.trials, 2)
            left, top = ((width - crop_w) * position[:, 0]).int(), ((height - crop_h) * position[:, 1]).int()
            right, bottom = left + crop_w, top + crop_h
            valid = (aspect >= self.min_aspect_ratio) & (aspect <= self.max_aspect_ratio) & (crop_w > 0) & (crop_h > 0)
            inside = (left[:, None] < centre_x) & (centre_x < right[:, None])
            inside &= (top[:, None] < centre_y) & (centre_y < bottom[:, None])  # trials x boxes
            crops = torch.stack([left, top, right, bottom], dim=1).to(boxes.dtype)
            ious = torch.where(inside, box_iou(crops, boxes), -1.0)
            valid &= inside.any(dim=1) & (ious.max(dim=1).values >= min_iou)
            if valid.any():
                first = int(valid.nonzero()[0])
                return dict(
                    top=int(top[first]),
                    left=int(left[first]),
                    height=int(crop_h[first]),
                    width=int(crop_w[first]),
                    is_within_crop_area=inside[first],
                )


def _to_tensor(image: np.ndarray) -> Tensor:
    """uint8 HWC -> float CHW in [0, 1]; torchvision's SSD normalises and resizes itself."""
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)


class SSDTrainTransform:
    """SSD training augmentation; ``(image, boxes, labels) -> (tensor, boxes, labels)``: a uint8 HWC
    image and N x 4 boxes in, a float CHW image in [0, 1] of ``image_size`` squared and the boxes
    (numpy) that are still on it out.

    Args:
        image_size: square output size (the detector's input).
        zoom_out_prob / max_zoom_out: probability and largest canvas ratio of the zoom-out.
        crop_prob: probability of the IoU-constrained crop (images with boxes only).
        crop_trials: crops tried per drawn minimum IoU.
        hflip: flip probability.
        photometric_prob: probability of the colour jitter.
        fill: RGB of the zoom-out canvas.
        seed: optional seed (each DataLoader worker still draws its own numbers when None).
    """

    def __init__(
        self,
        image_size: int,
        zoom_out_prob: float = 0.5,
        max_zoom_out: float = 4.0,
        crop_prob: float = 1.0,
        crop_trials: int = 50,
        hflip: float = 0.5,
        photometric_prob: float = 0.5,
        fill: Sequence[float] = (124, 116, 104),
        seed: int | None = None,
    ) -> None:
        self.image_size = image_size
        self.fill = tuple(fill)
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self.photometric = A.Compose(
            [A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=photometric_prob)]
        )
        self.zoom_out = v2.RandomZoomOut(fill=list(self.fill), side_range=(1.0, max_zoom_out), p=zoom_out_prob)
        self.crop = v2.RandomApply([SSDRandomIoUCrop(trials=crop_trials)], p=crop_prob)
        self.finish = v2.Compose(
            [
                v2.RandomHorizontalFlip(p=hflip),
                # As the detector resizes at evaluation (bilinear, no antialiasing), and OpenCV did here.
                v2.Resize((image_size, image_size), antialias=False),
                v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def set_random_seed(self, seed: int) -> None:
        """Seed every random choice of this pipeline (albumentations' generators included, which
        otherwise draw fresh entropy from the OS and make runs irreproducible)."""
        self._rng = np.random.default_rng(seed)
        self.photometric.set_random_seed(seed + 1)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # created lazily, so each worker process seeds its own from torch
            self._rng = np.random.default_rng(self.seed if self.seed is not None else torch.initial_seed() % 2**32)
        return self._rng

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        image = self.photometric(image=image)["image"]
        height, width = image.shape[:2]
        sample = {
            "image": tv_tensors.Image(torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)),
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        }
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.manual_seed(int(self.rng.integers(2**63 - 1)))
            sample = self.zoom_out(sample)
            if len(boxes):  # a crop needs a box to keep (without one, SSD keeps the image)
                sample = self.crop(sample)
            sample = self.finish(sample)
        return (
            sample["image"].as_subclass(Tensor),
            sample["boxes"].as_subclass(Tensor).numpy(),
            sample["labels"].numpy(),
        )


class SSDEvalTransform:
    """Evaluation: the image as it is (the detector resizes it and maps boxes back to it)."""

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        return _to_tensor(image), boxes, labels
