"""The paper's figures from Hydra multiruns of tools/train.py:

    python tools/plot.py tradeoff MULTIRUN_FOLDER [--by resolution|width] [--out docs/figure5.png]
    python tools/plot.py ablation MULTIRUN_FOLDER [--out docs/figure6.png]

tradeoff (Figure 5): best validation top-1 against multiply-adds, one line per input size (or per
width multiplier), from `python tools/train.py experiment=sweep_width_resolution`.
ablation (Figure 6): validation top-1 after each epoch, (a) linear bottleneck against ReLU6 after the
projection, (b) shortcut between bottlenecks / between expansions / none, from
`python tools/train.py experiment=sweep_ablations`.

MULTIRUN_FOLDER is outputs/<task_name>/multirun/<date_time>; unfinished runs are left out. Needs
matplotlib (pip install 'vision-mnv2[plot]')."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.cli import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=("tradeoff", "ablation"))
    parser.add_argument("folder", type=Path, help="a Hydra multirun folder (outputs/<task_name>/multirun/<date_time>)")
    parser.add_argument("--by", choices=("resolution", "width"), default="resolution", help="tradeoff: one line per")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: FOLDER/<figure>.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)

    from tasks.plots import ablation_figure, read_multirun, tradeoff_figure  # noqa: PLC0415  (after --help)
    from vision_mnv2.files import atomic_write  # noqa: PLC0415

    runs = read_multirun(args.folder)
    if args.figure == "tradeoff":
        fig = tradeoff_figure(runs, by=args.by, title=args.title)
    else:
        fig = ablation_figure(runs, title=args.title)
    out = args.out or args.folder / f"{args.figure}.png"
    atomic_write(out, lambda handle: fig.savefig(handle, format="png", dpi=120))  # whole or not at all
    print(f"{args.figure}: {len(runs)} runs of {args.folder} -> {out}")
    return fig


if __name__ == "__main__":
    run_tool(main)  # errors about the input are one line, as in every tool
