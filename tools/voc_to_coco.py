"""Convert Pascal VOC XML detection annotations (LabelImg, CVAT, ...) to one COCO JSON file.

    python tools/voc_to_coco.py --annotations data/annots --images data/images --output data/train.json \
        [--classes kangaroo,wallaby] [--list data/train.txt]

Then train on it: ``python tools/train.py task=ssdlite data=coco_custom data.root=data
data.num_classes=K data.train_images=images data.train_annotations=train.json ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.cli import run_tool
from vision_mnv2.data.voc_xml import voc_xml_to_coco, write_coco_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="folder of VOC .xml files")
    parser.add_argument("--images", required=True, help="folder of the images they name")
    parser.add_argument("--output", required=True, help="COCO JSON file to write")
    parser.add_argument("--classes", help="comma-separated class names in order (default: sorted names found)")
    parser.add_argument("--list", help="text file of annotation ids to convert, one per line (default: all)")
    args = parser.parse_args(argv)
    ids = None
    if args.list:
        ids = [line.split()[0] for line in Path(args.list).read_text().splitlines() if line.strip()]
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    dataset = voc_xml_to_coco(args.annotations, args.images, classes, ids)
    path = write_coco_json(dataset, args.output)
    names = ", ".join(c["name"] for c in dataset["categories"])
    print(f"{len(dataset['images'])} images, {len(dataset['annotations'])} objects, classes [{names}] -> {path}")
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
