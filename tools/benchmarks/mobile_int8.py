"""On-device int8 speed: this project's ExecuTorch (XNNPACK) programs against Google's own int8 TFLite
files of the same networks, side by side in one run, batch 1:

    python tools/benchmarks/mobile_int8.py \\
        --classifier mnv2.ckpt ../shared/models/google/mobilenet_v2_1.0_224_quant.tflite \\
        --deeplab deeplab.ckpt ../shared/models/google/deeplabv3_mnv2_pascal_quant.tflite \\
        --photos ../shared/models/google/cat.bmp ../shared/models/google/grace_hopper.bmp \\
        ../shared/models/google/bird_segmentation.bmp [--threads 2] [--update-docs]

The checkpoints are the TFLite files converted by tools/convert.py; each is exported as an int8
program calibrated on --photos, checked against the interpreter on them, and timed against it
alternately. Needs the extras `mobile` (executorch) and `dev` (ai-edge-litert).

The TFLite files run in the TFLite interpreter (ai-edge-litert, XNNPACK delegate too) with the same
thread count, timed alternately in one process so that the ratio is meaningful on a shared machine;
the program is exported at the TFLite file's fixed input size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vision_mnv2
from tasks.cli import run_tool
from vision_mnv2.benchmark import time_call
from vision_mnv2.data import read_rgb
from vision_mnv2.pipelines.base import to_tensor
from vision_mnv2.reports import argument_parser, command_line, publish, report_header

__all__ = ["MobileRow", "compare", "report"]


@dataclass
class MobileRow:
    name: str
    input_size: tuple[int, int]
    tflite_ms: float
    executorch_ms: float
    tflite_mb: float
    executorch_mb: float
    agreement: str  # how the int8 program's predictions match the interpreter's on the photos


def _interpreter(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _tflite_output(interpreter, image: np.ndarray) -> np.ndarray:
    (entry,) = interpreter.get_input_details()
    interpreter.set_tensor(entry["index"], image[None].astype(entry["dtype"]))
    interpreter.invoke()
    detail = interpreter.get_output_details()[0]
    return interpreter.get_tensor(detail["index"])[0]


def compare(
    checkpoint: Path,
    tflite: Path,
    photos: Sequence[Path],
    output: Path,
    threads: int = 2,
    iters: int = 20,
    repeats: int = 3,
) -> MobileRow:
    """Export ``checkpoint`` (a conversion of ``tflite``) as an int8 program calibrated on ``photos``,
    check its predictions against the interpreter's on them, and time both at batch 1."""
    torch.set_num_threads(threads)
    pipeline = vision_mnv2.load(checkpoint)
    interpreter = _interpreter(tflite, threads)
    height, width = (int(s) for s in interpreter.get_input_details()[0]["shape"][1:3])
    # Both are fed the photos resized to the TFLite file's input size (as the interpreter needs),
    # the program is exported at that size (segmentation: no dynamic size) and calibrated on them.
    images = [np.asarray(Image.fromarray(read_rgb(p)).resize((width, height), Image.BILINEAR)) for p in photos]
    inputs = [to_tensor(image)[None] for image in images]
    options = pipeline.fixed_size_options(height, width)
    output.mkdir(parents=True, exist_ok=True)
    path = pipeline.export_executorch(output / f"{pipeline.meta.builder}_int8.pte", "int8", inputs, **options)
    program = vision_mnv2.load(path, threads=threads)

    # The same photos through both: pixels where the TFLite file ends in a label per pixel (DeepLab's
    # argmax), else classes (top-1).
    agree = []
    label_map = False
    for image, tensor in zip(images, inputs):
        theirs = _tflite_output(interpreter, image)
        (ours,) = program.run(tensor)
        label_map = theirs.ndim == 2
        if label_map:
            agree.append(float((ours[0].argmax(0).numpy() == theirs).mean()))
        else:
            # TF's class 0 is the background, dropped by the converter (our class i is its i + 1).
            agree.append(float(int(ours[0].argmax()) == int(np.argmax(theirs[1:]))))
    agreement = (
        f"{np.mean(agree) * 100:.2f}% of pixels equal"
        if label_map
        else f"top-1 equal on {int(sum(agree))}/{len(agree)} photos"
    )

    feed = inputs[0]
    (entry,) = interpreter.get_input_details()
    resized = images[0][None].astype(entry["dtype"])
    method = program.runner.method

    def run_tflite() -> None:
        interpreter.set_tensor(entry["index"], resized)
        interpreter.invoke()

    def run_program() -> None:
        method.execute((feed,))

    best = {"tflite": float("inf"), "executorch": float("inf")}
    for _ in range(repeats):  # alternate, keep each one's best median
        best["tflite"] = min(best["tflite"], time_call(run_tflite, 3, iters) * 1000)
        best["executorch"] = min(best["executorch"], time_call(run_program, 3, iters) * 1000)
    return MobileRow(
        pipeline.meta.builder,
        (height, width),
        best["tflite"],
        best["executorch"],
        tflite.stat().st_size / 2**20,
        path.stat().st_size / 2**20,
        agreement,
    )


def report(rows: Sequence[MobileRow], threads: int, photos: Sequence[Path], command: str) -> str:
    lines = report_header(
        f"On-device int8: ExecuTorch (XNNPACK) vs Google's int8 TFLite, batch 1, {threads} threads",
        command,
        f"The program is exported from Google's converted checkpoint, int8 (XNNPACK's PT2E quantiser, "
        f"per-channel weights) calibrated on {len(photos)} photo(s) ({', '.join(p.name for p in photos)}), "
        "at the TFLite file's input size; both run on XNNPACK kernels. Latency: best of the alternated medians. "
        "DeepLab: the TFLite graph ends in its argmax, the program in the 21 logits at 513 x 513 (argmax in the pipeline).",
        packages=("executorch", "ai-edge-litert"),
    )
    lines += [
        "| network | input | Google int8 TFLite, ms | ExecuTorch int8, ms | **ExecuTorch / TFLite** | file MB (TFLite / .pte) | int8 program vs interpreter |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.input_size[0]}x{row.input_size[1]} | {row.tflite_ms:.2f} | {row.executorch_ms:.2f} "
            f"| **{row.executorch_ms / row.tflite_ms:.2f}x** | {row.tflite_mb:.1f} / {row.executorch_mb:.1f} | {row.agreement} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--classifier", nargs=2, metavar=("CKPT", "TFLITE"), help="converted classifier, its TFLite")
    parser.add_argument("--deeplab", nargs=2, metavar=("CKPT", "TFLITE"), help="converted DeepLab, its TFLite")
    parser.add_argument("--photos", nargs="+", required=True, help="photos to calibrate and compare on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="outputs/benchmarks/mobile_int8")
    args = parser.parse_args(argv)
    pairs = [pair for pair in (args.classifier, args.deeplab) if pair]
    if not pairs:
        parser.error("give --classifier and/or --deeplab")
    for path in [p for pair in pairs for p in pair] + args.photos:
        if not Path(path).is_file():
            parser.error(f"{path}: no such file")

    photos = [Path(p) for p in args.photos]
    output = Path(args.output)
    rows = [
        compare(Path(ckpt), Path(tflite), photos, output, args.threads, args.iters, args.repeats)
        for ckpt, tflite in pairs
    ]
    text = report(rows, args.threads, photos, command_line(__file__, argv))
    publish(text, "mobile_int8", update_docs=args.update_docs, docs=args.docs, report_file=output / "mobile_int8.md")
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
