"""Drawing predictions on images (numpy uint8 RGB in and out).

Made to be read: boxes and captions sized to the image, each caption on a filled band of its box's
colour with black or white text (whichever contrasts), captions moved apart when boxes crowd, and
bright, distinct class colours (the VOC palette's dark reds and greens vanish on photos; the palette
PNG masks keep VOC's colours, which VOC tools expect).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.voc import voc_palette
from .files import atomic_write

__all__ = ["CLASS_COLOURS", "class_colour", "colour_mask", "draw_detections", "draw_mask_overlay"]

# Distinct, bright colours (Tableau's 10, then 10 lighter ones), repeated for more classes.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip


def class_colour(index: int) -> tuple[int, int, int]:
    """The drawing colour of class ``index`` (0-based, background excluded)."""
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's embedded scalable font, no system fonts needed
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_detections(
    image: np.ndarray, boxes, scores, labels, class_names: Sequence[str], min_score: float = 0.3
) -> np.ndarray:
    """Boxes with "name score" captions for detections scoring at least ``min_score``, the best
    drawn last (on top). ``labels`` are 1-based (0 is the detector's background)."""
    boxes, scores, labels = (torch.as_tensor(x) for x in (boxes, scores, labels))
    keep = torch.where(scores >= min_score)[0]
    canvas = Image.fromarray(np.ascontiguousarray(image))
    if keep.numel() == 0:
        return np.array(canvas)
    height, width = image.shape[:2]
    line = max(2, round(min(height, width) / 200))
    font = _font(max(11, round(min(height, width) / 32)))
    draw = ImageDraw.Draw(canvas)
    placed: list[tuple[int, int, int, int]] = []
    order = keep[scores[keep].argsort()]  # lowest first, so the best boxes end up on top
    captions = []
    for index in order.tolist():
        x0, y0, x1, y1 = (float(v) for v in boxes[index])
        label = int(labels[index])
        colour = class_colour(label - 1)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        captions.append((colour, f"{class_names[label - 1]} {float(scores[index]):.2f}", x0, y0))
    # Captions placed best first, so a crowded scene keeps the best ones where they belong.
    for colour, text, x0, y0 in reversed(captions):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left + 2 * line, bottom - top + 2 * line
        x = int(min(max(0, x0), max(0, width - text_w)))
        y = int(y0 - text_h if y0 - text_h >= 0 else y0)  # above the box, or inside it at the top edge
        rect = (x, y, x + text_w, y + text_h)
        for _ in range(20):  # move down past captions already placed
            clash = next((other for other in placed if _overlaps(rect, other)), None)
            if clash is None:
                break
            y = clash[3]
            rect = (x, y, x + text_w, y + text_h)
        placed.append(rect)
        draw.rectangle(rect, fill=colour)
        draw.text((x + line - left, y + line - top), text, fill=_text_colour(colour), font=font)
    return np.array(canvas)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """Class indices to VOC colours (H x W x 3 uint8)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.asarray(mask, dtype=np.uint8)]


def draw_mask_overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """The image with every non-background class painted in its colour at ``alpha`` and outlined,
    so that regions stay visible on dark and busy photos. Computed in strips of rows, so that a
    huge photo needs little memory beyond the picture itself."""
    mask = np.asarray(mask)
    height, width = mask.shape
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.float32)
    for index in range(1, num_classes):
        colours[index] = class_colour(index - 1)
    out = np.empty(image.shape, dtype=np.uint8)
    rows = max(1, (1 << 20) // max(1, width))
    for top in range(0, height, rows):
        block = mask[top : top + rows]
        below = mask[top + 1 : top + rows + 1]  # each row's next row (the image's last has none)
        edges = np.zeros(block.shape, dtype=bool)
        edges[: len(below)] |= block[: len(below)] != below
        edges[:, :-1] |= block[:, :-1] != block[:, 1:]
        painted = (block > 0) & (block < num_classes)
        colour = colours[np.where(painted, block, 0)]
        pixels = image[top : top + rows].astype(np.float32)
        pixels[painted] = (1 - alpha) * pixels[painted] + alpha * colour[painted]
        outline = painted & edges
        pixels[outline] = colour[outline]
        out[top : top + rows] = pixels.round().clip(0, 255).astype(np.uint8)
    return out


def save_picture(path: str | os.PathLike, picture: np.ndarray, quality: int = 92) -> Path:
    """An H x W x 3 uint8 picture saved in the format its suffix names, whole or not at all
    (:func:`vision_mnv2.files.atomic_write`)."""
    path = Path(path)
    format_ = Image.registered_extensions().get(path.suffix.lower())
    if format_ is None:
        raise ValueError(f"{path}: no image format for the suffix {path.suffix!r}")
    image = Image.fromarray(picture)
    options = {"quality": quality} if format_ == "JPEG" else {}
    return atomic_write(path, lambda handle: image.save(handle, format=format_, **options))
