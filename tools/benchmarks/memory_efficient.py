"""Memory-efficient inference (paper section 5.1) against the standard path, batch 1:

    python tools/benchmarks/memory_efficient.py [--groups 4] [--device cpu|cuda] [--update-docs]

Classification at 224 and DeepLabv3 (mobile head, OS16) at 1024x1024: peak memory a forward adds,
latency, the largest tensor materialised at each resolution (paper Table 3), and the output
difference. Writes the tables into docs/BENCHMARKS.md with this command."""

from __future__ import annotations

import torch
from torch import nn

from tasks.cli import run_tool
from vision_mnv2.benchmark import cpu_peak_tensor_mb, cuda_peak_mb, peak_rss_delta_mb, time_call
from vision_mnv2.models import deeplabv3_mobilenet_v2, largest_activations, mobilenet_v2, set_expansion_groups
from vision_mnv2.reports import argument_parser, command_line, publish, report_header


@torch.no_grad()
def compare_memory_efficient(
    model: nn.Module,
    image_size: int,
    groups,
    device: str = "cpu",
    iters: int = 10,
    repeats: int = 3,
    label: str | None = None,
) -> dict[str, dict[str, float]]:
    """``groups``: as :func:`set_expansion_groups` takes it. Batch-1 peak memory added by a forward
    (CPU: live tensors by the profiler, and the resident set in a fresh process; CUDA: the
    allocator's peak) and median latency, standard path against ``groups``-way split expansion,
    alternating the two to share machine noise. Also checks that both give the same output."""
    model = model.eval().to(device)
    images = torch.rand(1, 3, image_size, image_size, device=device)
    set_expansion_groups(model, 1)
    reference = model(images)
    result: dict[str, dict[str, float]] = {}
    paths = (("standard", 1), (label or f"memory-efficient k={groups}", groups))
    for name, k in paths:
        set_expansion_groups(model, k)
        output = model(images)
        error = float((output - reference).abs().max())
        if device == "cuda":
            peak = cuda_peak_mb(model, images)
        else:
            peak = cpu_peak_tensor_mb(model, images)
        output_mb = output.numel() * output.element_size() / 2**20
        rss = peak_rss_delta_mb(model.cpu(), image_size, torch.get_num_threads()) if device == "cpu" else None
        result[name] = {
            "peak_mb": peak,
            "rss_mb": rss,
            "output_mb": output_mb,
            "max_abs_diff": error,
            "latency_ms": float("inf"),
        }
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(repeats):
        for name, k in paths:
            set_expansion_groups(model, k)

            def call():
                model(images)
                sync()

            result[name]["latency_ms"] = min(result[name]["latency_ms"], time_call(call, 2, iters) * 1000)
    set_expansion_groups(model, 1)
    return result


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument(
        "--first-blocks",
        type=int,
        default=None,
        help="split only the first N blocks (where the large tensors are); default all",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seg-size", type=int, default=1024)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    groups = args.groups if args.first_blocks is None else {i: args.groups for i in range(args.first_blocks)}
    scope = "" if args.first_blocks is None else f", first {args.first_blocks} blocks"
    lines = report_header(
        f"Memory-efficient inference (split expansion, k={args.groups}{scope}), batch 1, {args.device}",
        command_line(__file__, argv),
        "Peak memory: the most bytes held by tensors during one forward above the weights and the input (CUDA: "
        "the caching allocator's peak; CPU: PyTorch's profiler memory timeline). The output tensor is the same on "
        "both paths and included. Resident set growth (CPU only): the process high-water mark in a fresh process, "
        "which also holds what the C allocator keeps and oneDNN's scratch buffers. "
        "Latency: best median over alternating repeats.",
        f"{torch.get_num_threads()} threads",
        *([torch.cuda.get_device_name()] if args.device == "cuda" else []),
    )
    lines += [
        "| network | input | path | peak memory, MB | of which the output tensor, MB | ratio | resident set growth, MB | latency, ms | ratio | max abs output diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table3 = []
    for name, model, size in (
        ("MobileNetV2 classifier", mobilenet_v2(), 224),
        ("DeepLabv3 mobile head, OS16", deeplabv3_mobilenet_v2(aspp=False), args.seg_size),
    ):
        result = compare_memory_efficient(
            model, size, groups, args.device, label=f"memory-efficient k={args.groups}{scope}"
        )
        (standard, efficient) = result.values()
        for path, r in result.items():
            peak_ratio = (
                ""
                if r is standard or not standard["peak_mb"] or r["peak_mb"] is None
                else f"{r['peak_mb'] / standard['peak_mb']:.2f}"
            )
            time_ratio = "" if r is standard else f"{r['latency_ms'] / standard['latency_ms']:.2f}"
            peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
            lines.append(
                f"| {name} | {size}x{size} | {path} | {peak} | {r['output_mb']:.1f} | {peak_ratio} "
                f"| {'-' if r.get('rss_mb') is None else format(r['rss_mb'], '.1f')} | {r['latency_ms']:.1f} "
                f"| {time_ratio} | {r['max_abs_diff']:.1e} |"
            )
        model = model.cpu()
        set_expansion_groups(model, groups)
        records = largest_activations(model, torch.rand(1, 3, size, size))
        set_expansion_groups(model, 1)
        table3.append((name, size, records))
    lines += [
        "",
        "Largest tensor materialised at each resolution (16-bit, KB; paper Table 3 counts the same for 224):",
        "",
    ]
    for name, size, records in table3:
        lines += [f"{name} at {size}x{size}:", "", "| resolution | standard | memory-efficient |", "|---|---|---|"]
        for (h, w), v in records.items():
            lines.append(f"| {h}x{w} | {v['standard'] / 1024:,.0f}K | {v['memory_efficient'] / 1024:,.0f}K |")
        lines.append(
            f"| **max** | **{max(v['standard'] for v in records.values()) / 1024:,.0f}K** "
            f"| **{max(v['memory_efficient'] for v in records.values()) / 1024:,.0f}K** |"
        )
        lines.append("")
    section = f"memory_efficient_{args.device}_k{args.groups}" + (
        "" if args.first_blocks is None else f"_first{args.first_blocks}"
    )
    publish("\n".join(lines) + "\n", section, update_docs=args.update_docs, docs=args.docs)
    return 0


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
