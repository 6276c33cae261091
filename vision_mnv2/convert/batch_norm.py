"""Batch-norm statistics for networks whose batch norm was folded away (TFLite, ONNX, ...).

A converted network has the folded weights in its convolutions and nothing in its batch norms:
running mean 0, variance 1, scale 1. In eval mode that is exact; but fine-tuning puts batch norm in
train mode, where it normalises every channel by the batch's own statistics, which the network
never had, and the pretrained features are gone after the first step (a converted ImageNet
classifier stayed at chance on a small photo set; with real statistics it reached 0.94).

:func:`calibrate_batch_norm` measures each batch norm's input statistics on calibration images and
rewrites the batch norm so that it *normalises by those statistics and then undoes the
normalisation*: in eval mode the output is unchanged, and in train mode a batch like the
calibration images passes through nearly unchanged too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["IMAGE_SUFFIXES", "calibrate_batch_norm", "calibration_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"calibration images must be a non-empty N x C x H x W tensor, got {tuple(images.shape)}")
        yield from images.split(batch_size)
    else:
        yield from images


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, images: Tensor | Iterable[Tensor], batch_size: int = 4) -> None:
    """Give every batch norm of ``model`` the statistics of its input on ``images``, keeping the
    model's eval-mode output unchanged.

    ``images`` are what ``model`` takes (a tensor, cut into ``batch_size`` batches, or an iterable
    of batches). Each batch norm computes, in eval mode, a per-channel affine map ``a * z + c``. It
    gets ``running_mean = mu`` and ``running_var = var`` measured on its input ``z``, and
    ``weight = a * sqrt(var + eps)``, ``bias = c + a * mu``: the same map, now written as a batch norm
    over real statistics. For a folded conversion (``a = 1``, ``c`` = the folded bias) that is
    ``weight = sqrt(var + eps)``, ``bias = folded bias + mu``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        if not bn.affine or not bn.track_running_stats:
            raise ValueError(f"calibrate_batch_norm needs affine batch norms with running statistics, got {bn}")
    # Per batch norm: element count, mean and sum of squared deviations per channel, batches combined
    # as Chan et al. do (no float cancellation however many pixels).
    stats: dict[nn.Module, tuple[int, Tensor, Tensor]] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        z = inputs[0].detach()
        dims = [d for d in range(z.ndim) if d != 1]
        n = z.numel() // z.shape[1]
        var, mean = torch.var_mean(z, dim=dims, correction=0)
        mean, m2 = mean.double(), var.double() * n
        if module in stats:
            count, total_mean, total_m2 = stats[module]
            delta = mean - total_mean
            mean = total_mean + delta * n / (count + n)
            m2 = total_m2 + m2 + delta * delta * count * n / (count + n)
            n += count
        stats[module] = (n, mean, m2)

    hooks = [bn.register_forward_pre_hook(record) for bn in norms]
    was_training = model.training
    model.eval()  # the statistics of the network as it is, not as batch statistics would change it
    try:
        for batch in _batches(images, batch_size):
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    missing = [name for name, m in model.named_modules() if m in norms and m not in stats]
    if missing:
        raise ValueError(f"calibration images never reached batch norm(s) {missing[:4]}")
    for bn in norms:
        count, mean, m2 = stats[bn]
        var = m2 / max(count - 1, 1)  # unbiased, as batch norm keeps its running variance
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(scale * torch.sqrt(var + bn.eps))
        bn.bias.copy_(shift + scale * mean)


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # truncated, not an image, unreadable
        raise ValueError(f"calibration image {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from exc


def calibration_images(source: str | os.PathLike | None, count: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    """``count`` RGB images resized to ``size`` (H, W), as a uint8 tensor N x 3 x H x W.

    ``source``: a folder of images (searched recursively; a training set's root will do, images are
    drawn at random so that all classes of an ImageNet-layout folder take part), or ``None`` for
    generated scenes (:func:`vision_mnv2.data.synthetic.render_scene`: textured backgrounds with
    shapes). Photos like the fine-tuning data give the best statistics; generated scenes give
    statistics of the right magnitude where no photos are at hand, far better than none.
    """
    if count < 1:
        raise ValueError(f"the number of calibration images must be positive, got {count}")
    rng = np.random.default_rng(seed)
    if source is None:
        from vision_mnv2.data.synthetic import SHAPES, render_scene  # noqa: PLC0415

        images = []
        for _ in range(count):
            shapes = rng.choice(len(SHAPES), size=int(rng.integers(1, 4)), replace=False)
            image, _ = render_scene(rng, size, [int(s) for s in shapes], (0.1, 0.4))
            images.append(image)
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration image folder {str(folder)!r} does not exist or is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"calibration image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        chosen = sorted(rng.choice(len(files), size=min(count, len(files)), replace=False))
        images = [_read_image(files[i], size) for i in chosen]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
