"""Synthetic datasets written in the real on-disk layouts, so the real loaders are what get tested.

Scenes are coloured shapes on textured backgrounds. The class of an object is its *shape*; colour,
size, position, rotation and background vary at random, so a model has to learn shape and cannot
cheat on colour. Everything is deterministic given the seed.

One renderer serves every task: :func:`render_scene` returns the image and, for each object, its
class, bounding box and pixel mask. Writers turn scenes into a dataset layout:

* :func:`write_classification_dataset` - ImageNet layout, ``{train,val}/<class>/<id>.jpg``.
* :func:`write_detection_dataset` - COCO 2017 layout, JPEGs and ``instances_*.json``.
* :func:`write_segmentation_dataset` - Pascal VOC 2012 layout, JPEGs and palette PNG masks.
* :func:`write_coco_sized_dataset` - COCO 2017's layout and size (118k images, 860k boxes), its
  images hard links to a few photo-like JPEGs: what the data pipeline does at that scale.

Writers are idempotent and atomic: a dataset is built in a temporary folder and renamed into place
with a ``MANIFEST.json`` that records how it was made; an existing dataset with the same manifest is
reused, so the training entry point can call them on every start.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..files import remove_stale_temporaries, temporary_name

__all__ = [
    "COCO_CATEGORY_IDS",
    "SHAPES",
    "SceneObject",
    "render_background",
    "render_shape_mask",
    "render_scene",
    "write_classification_dataset",
    "write_coco_sized_dataset",
    "write_detection_dataset",
    "write_segmentation_dataset",
]

# The classes, in order. A dataset with k classes uses the first k.
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "ring",
    "diamond",
    "crescent",
    "arrow",
)
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class SceneObject:
    """One object of a rendered scene."""

    category: int  # index into SHAPES
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, exclusive max (COCO-style extent)
    mask: np.ndarray  # bool, H x W, visible pixels only (later objects occlude earlier ones)


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background: a colour gradient, low-frequency blobs, stripes and pixel noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]
    # Smooth blobs: a coarse random grid upsampled.
    coarse = rng.uniform(-40, 40, size=(4, 4, 3)).astype(np.float32)
    blobs = (
        np.asarray(
            Image.fromarray(((coarse + 40) * 3.1875).astype(np.uint8)).resize((width, height), Image.BILINEAR),
            dtype=np.float32,
        )
        / 3.1875
        - 40
    )
    image += blobs
    # Stripes at a random frequency and direction.
    freq = rng.uniform(0.05, 0.4)
    stripe_angle = rng.uniform(0, math.pi)
    phase = (xx * math.cos(stripe_angle) + yy * math.sin(stripe_angle)) * freq
    image += rng.uniform(5, 30) * np.sin(phase)[..., None]
    image += rng.normal(0, rng.uniform(3, 12), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, radius: float, n: int, rotation: float, inner: float | None = None):
    points = []
    steps = 2 * n if inner is not None else n
    for i in range(steps):
        r = radius if inner is None or i % 2 == 0 else radius * inner
        a = rotation + 2 * math.pi * i / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def render_shape_mask(
    kind: str, height: int, width: int, center: tuple[float, float], radius: float, rotation: float
) -> np.ndarray:
    """Boolean mask of one shape of circumscribed ``radius`` centred at ``center`` (x, y)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center
    r = radius
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, r, 4, rotation + math.pi / 4), fill=255)
    elif kind == "diamond":
        # A rhombus, elongated, so that it differs from a rotated square.
        pts = [(0, -r), (0.55 * r, 0), (0, r), (-0.55 * r, 0)]
        c, s = math.cos(rotation), math.sin(rotation)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=255)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rotation), fill=255)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rotation, inner=0.45), fill=255)
    elif kind == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rotation), fill=255)
    elif kind == "cross":
        w = 0.32 * r
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(rotation), math.sin(rotation)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=255)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = 0.55 * r
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif kind == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = 0.45 * r
        ox, oy = cx + off * math.cos(rotation), cy + off * math.sin(rotation)
        draw.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
    elif kind == "arrow":
        pts = [
            (-r, -0.22 * r),
            (0.2 * r, -0.22 * r),
            (0.2 * r, -0.6 * r),
            (r, 0),
            (0.2 * r, 0.6 * r),
            (0.2 * r, 0.22 * r),
            (-r, 0.22 * r),
        ]
        c, s = math.cos(rotation), math.sin(rotation)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
    return np.asarray(canvas) > 127


def _object_colour(rng: np.random.Generator, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A saturated colour that stands out from the background under the mask."""
    under = background[mask].mean(axis=0) if mask.any() else np.full(3, 127.0)
    best, best_dist = None, -1.0
    for _ in range(6):
        colour = rng.uniform(0, 255, size=3)
        dist = float(np.abs(colour - under).sum())
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    categories: Sequence[int],
    radius_range: tuple[float, float],
    min_visible_fraction: float = 0.4,
) -> tuple[np.ndarray, list[SceneObject]]:
    """Render one scene with one object per entry of ``categories`` (indices into :data:`SHAPES`).

    ``radius_range`` is the circumscribed radius as a fraction of the shorter image side. Objects
    are painted in order; one left less than ``min_visible_fraction`` visible by later objects is
    dropped from the returned list (its pixels stay, as real occluded clutter would).
    """
    height, width = size
    image = render_background(rng, height, width).astype(np.float32)
    short = min(height, width)
    painted: list[tuple[int, np.ndarray]] = []
    for category in categories:
        radius = rng.uniform(*radius_range) * short
        # Keep the centre inside so that the object is mostly in the picture.
        cx = rng.uniform(radius * 0.6, width - radius * 0.6)
        cy = rng.uniform(radius * 0.6, height - radius * 0.6)
        mask = render_shape_mask(SHAPES[category], height, width, (cx, cy), radius, rng.uniform(0, 2 * math.pi))
        if not mask.any():
            continue
        colour = _object_colour(rng, image, mask)
        # A light horizontal shading, so objects are not flat colour.
        shade = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, width, dtype=np.float32)
        shade = np.broadcast_to(shade[None, :], (height, width))
        image[mask] = np.clip(colour[None, :] * shade[mask][:, None], 0, 255)
        painted.append((category, mask))

    objects: list[SceneObject] = []
    occupied = np.zeros((height, width), dtype=bool)
    for category, mask in reversed(painted):  # last painted is on top
        visible = mask & ~occupied
        occupied |= mask
        if not visible.any() or visible.sum() < min_visible_fraction * mask.sum():
            continue
        ys, xs = np.nonzero(visible)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SceneObject(category, box, visible))
    objects.reverse()
    noise = rng.normal(0, 2.0, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), objects


# --------------------------------------------------------------------------------------------------
# Writers


def _write_atomically(root: Path, manifest: dict, build: Callable[[Path], None]) -> Path:
    """Build a dataset in a temporary sibling folder and rename it to ``root`` when complete. Such
    folders left by a killed generator are removed first.

    An existing ``root`` with the same manifest is reused; one with another manifest is an error
    rather than silently overwritten (it may be a user's data).
    """
    root = Path(root).expanduser().resolve()
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        if existing == manifest:
            return root
        raise FileExistsError(
            f"{root} holds a synthetic dataset made with other settings ({manifest_path}); "
            "delete the folder or choose another root"
        )
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a synthetic dataset of this project; not overwriting it")
    root.parent.mkdir(parents=True, exist_ok=True)
    # A generator killed mid-way leaves its hidden folder; its process id in the name tells it from
    # the folder of another generator that is still running (a DDP rank, a parallel test).
    remove_stale_temporaries(root.parent, root.name)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_name(root.name), dir=root.parent))
    try:
        build(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if root.exists():
            root.rmdir()  # empty, checked above
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process (a DDP rank, a parallel test) finished first with the same settings.
            if (root / MANIFEST).is_file() and json.loads((root / MANIFEST).read_text()) == manifest:
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


@dataclass(frozen=True)
class ClassificationSpec:
    num_classes: int = 8
    train_per_class: int = 200
    val_per_class: int = 50
    image_size: int = 128
    seed: int = 0
    version: int = 1  # bump when the renderer changes, so cached datasets are rebuilt


def write_classification_dataset(
    root: str | os.PathLike,
    num_classes: int = 8,
    train_per_class: int = 200,
    val_per_class: int = 50,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a shape-classification dataset in the ImageNet layout and return its root.

    ``root/{train,val}/<shape>/<split>_<index>.jpg``: one large object per image (the label), with
    zero to two small distractor shapes of other classes, so the label is the dominant shape.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be between 2 and {len(SHAPES)}, got {num_classes}")
    spec = ClassificationSpec(num_classes, train_per_class, val_per_class, image_size, seed)

    def build(tmp: Path) -> None:
        for split_index, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class))):
            rng = np.random.default_rng([seed, split_index])
            for label in range(num_classes):
                folder = tmp / split / SHAPES[label]
                folder.mkdir(parents=True)
                for index in range(per_class):
                    n_distractors = int(rng.integers(0, 3))
                    others = [c for c in range(num_classes) if c != label]
                    distractors = [int(rng.choice(others)) for _ in range(n_distractors)]
                    image = _render_labelled(rng, image_size, label, distractors)
                    Image.fromarray(image).save(folder / f"{split}_{index:05d}.jpg", quality=92)

    return _write_atomically(Path(root), {"kind": "classification", **asdict(spec)}, build)


def _render_labelled(rng: np.random.Generator, image_size: int, label: int, distractors: list[int]) -> np.ndarray:
    """Small distractor shapes first, then the labelled shape large and on top."""
    height = width = image_size
    if distractors:
        image, _ = render_scene(rng, (height, width), distractors, (0.08, 0.16))
    else:
        image = render_background(rng, height, width)
    base = image.astype(np.float32)
    radius = rng.uniform(0.22, 0.42) * image_size
    cx = rng.uniform(radius * 0.8, width - radius * 0.8)
    cy = rng.uniform(radius * 0.8, height - radius * 0.8)
    mask = render_shape_mask(SHAPES[label], height, width, (cx, cy), radius, rng.uniform(0, 2 * math.pi))
    base[mask] = _object_colour(rng, base, mask)
    return np.clip(base + rng.normal(0, 2.0, size=base.shape), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DetectionSpec:
    num_classes: int = 6
    train_images: int = 600
    val_images: int = 150
    image_size: tuple[int, int] = (240, 320)
    max_objects: int = 6
    empty_fraction: float = 0.05
    seed: int = 0
    version: int = 1


def coco_category_id(label: int) -> int:
    """Category ids with gaps, as in real COCO (1, 3, 5, ...), so id <-> label mapping is exercised."""
    return 2 * label + 1


def write_detection_dataset(
    root: str | os.PathLike,
    num_classes: int = 6,
    train_images: int = 600,
    val_images: int = 150,
    image_size: Sequence[int] = (240, 320),
    max_objects: int = 6,
    empty_fraction: float = 0.05,
    seed: int = 0,
) -> Path:
    """Write a detection dataset in the COCO 2017 layout and return its root.

    ``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{train2017,val2017}.json``
    with boxes, areas, RLE masks and ``iscrowd`` 0. Each image holds 1 to ``max_objects`` shapes
    (a few hold none), small to large, possibly overlapping.
    """
    import pycocotools.mask as mask_utils  # only needed by this writer

    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be between 1 and {len(SHAPES)}, got {num_classes}")
    height, width = (int(image_size[0]), int(image_size[1]))
    spec = DetectionSpec(num_classes, train_images, val_images, (height, width), max_objects, empty_fraction, seed)
    categories = [{"id": coco_category_id(i), "name": SHAPES[i], "supercategory": "shape"} for i in range(num_classes)]

    def build(tmp: Path) -> None:
        (tmp / "annotations").mkdir(parents=True)
        annotation_id = 1
        for split_index, (split, count) in enumerate((("train2017", train_images), ("val2017", val_images))):
            rng = np.random.default_rng([seed, 100 + split_index])
            (tmp / split).mkdir()
            images, annotations = [], []
            for index in range(count):
                image_id = index + 1
                n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
                labels = [int(rng.integers(0, num_classes)) for _ in range(n)]
                image, objects = render_scene(rng, (height, width), labels, (0.05, 0.35))
                file_name = f"{image_id:012d}.jpg"
                Image.fromarray(image).save(tmp / split / file_name, quality=92)
                images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
                for obj in objects:
                    x0, y0, x1, y1 = obj.box
                    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    annotations.append(
                        {
                            "id": annotation_id,
                            "image_id": image_id,
                            "category_id": coco_category_id(obj.category),
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": int(obj.mask.sum()),
                            "segmentation": rle,
                            "iscrowd": 0,
                        }
                    )
                    annotation_id += 1
            payload = {
                "info": {"description": "vision-mnv2 synthetic shapes", "version": str(spec.version)},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))

    manifest = {"kind": "detection", **asdict(spec)}
    manifest["image_size"] = list(manifest["image_size"])
    return _write_atomically(Path(root), manifest, build)


@dataclass(frozen=True)
class SegmentationSpec:
    num_classes: int = 6
    train_images: int = 600
    val_images: int = 150
    image_size: tuple[int, int] = (240, 320)
    max_objects: int = 4
    radius_range: tuple[float, float] = (0.08, 0.35)
    boundary: int = 1
    seed: int = 0
    version: int = 1


def _object_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the mask's edge (inside or outside), VOC's 'void' outline."""
    height, width_px = mask.shape
    padded = np.pad(mask, width, mode="edge")  # the image border is not an edge
    grown = np.zeros_like(mask)
    shrunk = np.ones_like(mask)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            window = padded[dy : dy + height, dx : dx + width_px]
            grown |= window
            shrunk &= window
    return grown & ~shrunk


def write_segmentation_dataset(
    root: str | os.PathLike,
    num_classes: int = 6,
    train_images: int = 600,
    val_images: int = 150,
    image_size: Sequence[int] = (240, 320),
    max_objects: int = 4,
    radius_range: Sequence[float] = (0.08, 0.35),
    boundary: int = 1,
    seed: int = 0,
) -> Path:
    """Write a semantic segmentation dataset in the Pascal VOC 2012 layout and return its root.

    ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png`` (palette PNGs: 0 background,
    shape ``i`` is class ``i + 1``, 255 on a band ``boundary`` pixels wide around every object as
    VOC marks its outlines), ``root/ImageSets/Segmentation/{train,val,trainval}.txt`` and
    ``root/class_names.txt``. ``num_classes`` counts the shapes; the masks have one more class.
    Each image holds 1 to ``max_objects`` shapes whose circumscribed radius is ``radius_range`` of
    the shorter image side.
    """
    from .voc import CLASS_NAMES_FILE, IGNORE_INDEX, write_mask  # noqa: PLC0415 - avoid a cycle

    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be between 1 and {len(SHAPES)}, got {num_classes}")
    height, width = (int(image_size[0]), int(image_size[1]))
    radius = (float(radius_range[0]), float(radius_range[1]))
    spec = SegmentationSpec(num_classes, train_images, val_images, (height, width), max_objects, radius, boundary, seed)

    def build(tmp: Path) -> None:
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / folder).mkdir(parents=True)
        lists: dict[str, list[str]] = {}
        for split_index, (split, count) in enumerate((("train", train_images), ("val", val_images))):
            rng = np.random.default_rng([seed, 200 + split_index])
            ids = []
            for index in range(count):
                image_id = f"{split}_{index:05d}"
                labels = [int(rng.integers(0, num_classes)) for _ in range(int(rng.integers(1, max_objects + 1)))]
                image, objects = render_scene(rng, (height, width), labels, radius, min_visible_fraction=0.0)
                mask = np.zeros((height, width), dtype=np.uint8)
                outline = np.zeros((height, width), dtype=bool)
                for obj in objects:  # in paint order: visible masks do not overlap
                    mask[obj.mask] = obj.category + 1
                    if boundary > 0:
                        outline |= _object_boundary(obj.mask, boundary)
                mask[outline] = IGNORE_INDEX
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=92)
                write_mask(tmp / "SegmentationClass" / f"{image_id}.png", mask)
                ids.append(image_id)
            lists[split] = ids
        lists["trainval"] = lists["train"] + lists["val"]
        for split, ids in lists.items():
            (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (tmp / CLASS_NAMES_FILE).write_text("\n".join(("background", *SHAPES[:num_classes])) + "\n")

    manifest = {"kind": "segmentation", **asdict(spec)}
    manifest["image_size"] = list(manifest["image_size"])
    manifest["radius_range"] = list(manifest["radius_range"])
    return _write_atomically(Path(root), manifest, build)


# --------------------------------------------------------------------------------------------------
# A COCO-sized detection set: COCO 2017's counts and JSON size, at no disk cost for the images

# COCO 2017's 80 category ids (1..90 with gaps).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
# (width, height) of the image variants: COCO's most common sizes.
COCO_IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375))


def _photo_like_variants(folder: Path, seed: int) -> list[Path]:
    """One smooth, photo-like JPEG per size of :data:`COCO_IMAGE_SIZES` (the decoding cost of a real
    photo of that size, not of noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    for index, (width, height) in enumerate(COCO_IMAGE_SIZES):
        low = rng.uniform(0, 255, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
        image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
        noise = rng.normal(0, 6, size=(height, width, 3))
        array = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"variant_{index}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(path)
    return paths


def _polygon_texts(rng: np.random.Generator, count: int = 256, points: int = 24) -> list[str]:
    """Polygon texts of COCO's look (2-decimal coordinates); boxes reuse them, only the size matters."""
    polygons = []
    for _ in range(count):
        coords = rng.uniform(0, 640, size=2 * points)
        polygons.append("[[" + ",".join(f"{v:.2f}" for v in coords) + "]]")
    return polygons


def _write_coco_sized_split(
    root: Path, split: str, images: int, boxes: int, first_id: int, variants: list[Path], rng: np.random.Generator
) -> None:
    folder = root / split
    folder.mkdir(parents=True)
    sizes = rng.integers(len(COCO_IMAGE_SIZES), size=images)
    image_ids = first_id + np.arange(images)
    # Boxes per image: ~1% images without any, the rest Poisson around the mean COCO needs.
    empty = rng.random(images) < 0.01
    counts = np.where(empty, 0, 1 + rng.poisson(max(boxes / images / 0.99 - 1, 0), size=images))
    image_text = []
    for image_id, size in zip(image_ids.tolist(), sizes.tolist()):
        name = f"{image_id:012d}.jpg"
        os.link(variants[size], folder / name)
        width, height = COCO_IMAGE_SIZES[size]
        image_text.append(
            f'{{"license": 1, "file_name": "{name}", "coco_url": "http://images.cocodataset.org/{split}/{name}", '
            f'"height": {height}, "width": {width}, "date_captured": "2013-11-14 11:18:45", "id": {image_id}}}'
        )
    total = int(counts.sum())
    owner = np.repeat(np.arange(images), counts)
    width = np.array([COCO_IMAGE_SIZES[s][0] for s in sizes], dtype=np.float64)[owner]
    height = np.array([COCO_IMAGE_SIZES[s][1] for s in sizes], dtype=np.float64)[owner]
    # Box sides log-uniform from 2 px to the image side (COCO: many small objects), inside the image.
    w = np.floor(np.exp(rng.uniform(np.log(2), np.log(width))) * 100) / 100
    h = np.floor(np.exp(rng.uniform(np.log(2), np.log(height))) * 100) / 100
    x = np.floor(rng.uniform(0, 1, total) * (width - w) * 100) / 100
    y = np.floor(rng.uniform(0, 1, total) * (height - h) * 100) / 100
    category = np.asarray(COCO_CATEGORY_IDS)[rng.integers(80, size=total)]
    crowd = (rng.random(total) < 0.01).astype(int)
    polygons = _polygon_texts(rng)
    polygon = rng.integers(len(polygons), size=total)
    annotation_text = [
        f'{{"segmentation": {polygons[p]}, "area": {a:.4f}, "iscrowd": {c}, "image_id": {i}, '
        f'"bbox": [{bx:.2f}, {by:.2f}, {bw:.2f}, {bh:.2f}], "category_id": {k}, "id": {n}}}'
        for p, a, c, i, bx, by, bw, bh, k, n in zip(
            polygon.tolist(), (0.6 * w * h).tolist(), crowd.tolist(), image_ids[owner].tolist(),
            x.tolist(), y.tolist(), w.tolist(), h.tolist(), category.tolist(), range(first_id, first_id + total),
        )
    ]  # fmt: skip
    categories = [{"supercategory": "thing", "id": c, "name": f"class_{c}"} for c in COCO_CATEGORY_IDS]
    # Written as text in pieces: json.dumps of the whole set would hold it twice in memory.
    with open(root / "annotations" / f"instances_{split}.json", "w") as file:
        file.write('{"info": {"description": "COCO-sized benchmark set"}, "licenses": [{"id": 1, "name": "x"}], ')
        file.write('"images": [' + ", ".join(image_text) + "], ")
        file.write('"annotations": [' + ", ".join(annotation_text) + "], ")
        file.write('"categories": ' + json.dumps(categories) + "}")


def write_coco_sized_dataset(
    root: str | os.PathLike, train_images: int = 118287, boxes: int = 860001, val_images: int = 5000, seed: int = 0
) -> Path:
    """Write a set in the COCO 2017 layout of COCO 2017's size and return its root (reused when it
    exists with these settings), to measure what the data pipeline does at that scale.

    ``train_images`` training and ``val_images`` validation images, about ``boxes`` training boxes
    (validation in proportion) with COCO's 80 category ids, 1% crowd, ~1% images without boxes, and
    a 24-point polygon per box so that the JSON is about as large as ``instances_train2017.json``.
    Image files are hard links to six 640x480-class JPEGs (COCO's common sizes): every file name
    exists and decodes at a real photo's cost, at no disk cost. Raises ``OSError`` (no space left)
    before writing when the disk holds less than twice what the set needs."""
    root = Path(root).expanduser()
    manifest = {"kind": "coco_sized", "version": 1, "train_images": train_images, "boxes": boxes,
                "val_images": val_images, "seed": seed}  # fmt: skip
    if not (root / MANIFEST).is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root.parent).free
        needed = int(boxes * 700 + (train_images + val_images) * 400 + (200 << 20))  # JSON + directory entries
        if free < 2 * needed:
            raise OSError(
                errno.ENOSPC,
                f"{free / 2**30:.1f} GiB free, the COCO-sized set needs about {needed / 2**30:.1f} GiB",
                str(root.parent),
            )

    def build(tmp: Path) -> None:
        (tmp / "annotations").mkdir(parents=True)
        rng = np.random.default_rng(seed)
        variants = _photo_like_variants(tmp, seed)
        _write_coco_sized_split(tmp, "train2017", train_images, boxes, 1, variants, rng)
        val_boxes = round(boxes * val_images / train_images)
        _write_coco_sized_split(tmp, "val2017", val_images, val_boxes, 10**7, variants, rng)

    return _write_atomically(root, manifest, build)
