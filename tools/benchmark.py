"""Benchmark a task's network against torchvision's:
``python tools/benchmark.py task=classification`` (random weights) or ``ckpt_path=PATH``.

Parameters, MACs, latency at batch 1 and throughput at ``benchmark.batch`` in eager PyTorch and in
onnxruntime, peak memory, and the training loop's throughput; the report goes to the run folder
(``benchmark.update_docs=true`` replaces the task's section of docs/BENCHMARKS.md)."""

import sys

import hydra
from omegaconf import DictConfig

from tasks.cli import with_task_from_checkpoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from tasks.benchmark import run_benchmark  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    run_benchmark(cfg)


if __name__ == "__main__":
    sys.argv = with_task_from_checkpoint(sys.argv)  # compose the checkpoint's task when none is named
    main()
