"""Pascal VOC XML detection annotations (what LabelImg, CVAT and most labelling tools write),
converted to a COCO annotation dict so that one loader and one evaluator (pycocotools) serve both.

Conventions: VOC boxes are 1-based inclusive pixel indices, so ``xmin=1, xmax=10`` is 10 pixels
wide and becomes COCO ``[0, y, 10, h]``. Objects marked ``difficult`` become ``iscrowd: 1``: left out
of training and ignored by COCOeval's matching, as the VOC devkit ignores them.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..files import atomic_write_text
from .classification import DatasetError

__all__ = ["voc_xml_to_coco", "write_coco_json"]


def _text(node: ET.Element, tag: str, path: Path, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DatasetError(f"{path}: <{tag}> is missing in <{node.tag}>")
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    value = _text(node, tag, path)
    try:
        return float(value)
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is {value!r}, not a number") from None


def voc_xml_to_coco(
    annotation_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> dict:
    """Read ``annotation_dir/*.xml`` (or the listed ``ids``) into a COCO-format dict.

    Args:
        image_dir: where the images named by ``<filename>`` are; each must exist.
        class_names: the categories in order (ids 1..K); default the sorted names found. With a
            list given, an object of another class is an error naming the file.
        ids: annotation file stems to read (an image-set list); default every XML file.
    """
    annotation_dir, image_dir = Path(annotation_dir).expanduser(), Path(image_dir).expanduser()
    for folder in (annotation_dir, image_dir):
        if not folder.is_dir():
            raise DatasetError(f"folder {str(folder)!r} does not exist")
    files = [annotation_dir / f"{i}.xml" for i in ids] if ids is not None else sorted(annotation_dir.glob("*.xml"))
    if not files:
        raise DatasetError(f"{annotation_dir} holds no .xml annotation files")
    parsed = []
    for path in files:
        if not path.is_file():
            raise DatasetError(f"annotation file {str(path)!r} does not exist")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as error:
            raise DatasetError(f"{path}: not valid XML ({error})") from None
        file_name = _text(root, "filename", path)
        image_path = image_dir / file_name
        if not image_path.is_file():
            # Some tools write the name without its extension.
            matches = sorted(image_dir.glob(f"{Path(file_name).stem}.*"))
            if not matches:
                raise DatasetError(f"{path}: image {str(image_path)!r} does not exist")
            image_path = matches[0]
        size = root.find("size")
        width = height = 0
        if size is not None and _text(size, "width", path, required=False):
            width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
        if width <= 0 or height <= 0:  # LabelImg writes 0 when it could not read the image
            try:
                with Image.open(image_path) as image:
                    width, height = image.size
            except OSError as error:
                raise DatasetError(f"{image_path}: cannot read image ({error})") from None
        objects = []
        for obj in root.findall("object"):
            name = _text(obj, "name", path)
            box = obj.find("bndbox")
            if box is None:
                raise DatasetError(f"{path}: object {name!r} has no <bndbox>")
            coords = [_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax")]
            difficult = (_text(obj, "difficult", path, required=False) or "0") == "1"
            objects.append((name, coords, difficult))
        parsed.append((path, image_path, width, height, objects))

    found = sorted({name for *_, objects in parsed for name, _, _ in objects})
    names = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        where = next(str(p) for p, *_, objects in parsed if any(o[0] in unknown for o in objects))
        raise DatasetError(f"{where}: classes {unknown} are not in the class list {names}")
    category = {name: index + 1 for index, name in enumerate(names)}
    images, annotations = [], []
    for image_id, (_, image_path, width, height, objects) in enumerate(parsed, start=1):
        images.append({"id": image_id, "file_name": image_path.name, "width": width, "height": height})
        for name, (x0, y0, x1, y1), difficult in objects:
            w, h = x1 - x0 + 1, y1 - y0 + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[name],
                    "bbox": [x0 - 1, y0 - 1, w, h],
                    "area": max(0.0, w) * max(0.0, h),
                    "iscrowd": int(difficult),
                }
            )
    return {
        "info": {"description": f"converted from Pascal VOC XML in {annotation_dir}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "object"} for n, i in category.items()],
    }


def write_coco_json(dataset: dict, path: str | os.PathLike) -> Path:
    """Write a COCO dict atomically (a temporary file renamed into place)."""
    return atomic_write_text(path, json.dumps(dataset))
