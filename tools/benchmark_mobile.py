"""On-device int8 speed: this project's ExecuTorch (XNNPACK) programs against Google's own int8 TFLite
files of the same networks, side by side in one run, batch 1:

    python tools/benchmark_mobile.py \\
        --classifier mnv2.ckpt ../shared/models/google/mobilenet_v2_1.0_224_quant.tflite \\
        --deeplab deeplab.ckpt ../shared/models/google/deeplabv3_mnv2_pascal_quant.tflite \\
        --photos ../shared/models/google/cat.bmp ../shared/models/google/grace_hopper.bmp \\
        ../shared/models/google/bird_segmentation.bmp [--threads 2] [--update-docs]

The checkpoints are the TFLite files converted by tools/convert.py; each is exported as an int8
program calibrated on --photos, checked against the interpreter on them, and timed against it
alternately. Needs the extras `mobile` (executorch) and `dev` (ai-edge-litert)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.cli import run_tool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", nargs=2, metavar=("CKPT", "TFLITE"), help="converted classifier, its TFLite")
    parser.add_argument("--deeplab", nargs=2, metavar=("CKPT", "TFLITE"), help="converted DeepLab, its TFLite")
    parser.add_argument("--photos", nargs="+", required=True, help="photos to calibrate and compare on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="outputs/benchmark_mobile")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--docs", default="docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    pairs = [pair for pair in (args.classifier, args.deeplab) if pair]
    if not pairs:
        parser.error("give --classifier and/or --deeplab")
    for path in [p for pair in pairs for p in pair] + args.photos:
        if not Path(path).is_file():
            parser.error(f"{path}: no such file")

    from tasks.benchmark_mobile import compare, report  # noqa: PLC0415
    from vision_mnv2.reports import command_line, write_report, write_section  # noqa: PLC0415

    photos = [Path(p) for p in args.photos]
    output = Path(args.output)
    rows = [
        compare(Path(ckpt), Path(tflite), photos, output, args.threads, args.iters, args.repeats)
        for ckpt, tflite in pairs
    ]
    text = report(rows, args.threads, photos, command_line("benchmark_mobile.py", argv))
    print(text)
    write_report(output / "benchmark_mobile.md", text)
    if args.update_docs:
        write_section(Path(args.docs), "mobile_int8", text)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
