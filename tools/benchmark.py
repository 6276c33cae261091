"""Benchmark a task's network against torchvision's:
``python tools/benchmark.py task=classification`` (random weights) or ``ckpt_path=PATH``.

Parameters, MACs, latency at batch 1 and throughput at ``benchmark.batch`` in eager PyTorch and in
onnxruntime, peak memory, and the training loop's throughput; the report goes to the run folder
(``benchmark.update_docs=true`` replaces the task's section of docs/BENCHMARKS.md)."""

from omegaconf import DictConfig

from tasks.cli import run_tool


def main(cfg: DictConfig) -> None:
    # The measurement lives with the others in tools/benchmarks/, beside this script (first on
    # sys.path when it runs); torch and Lightning load after Hydra has handled --help.
    from benchmarks.against_torchvision import run_benchmark  # noqa: PLC0415

    run_benchmark(cfg)


if __name__ == "__main__":
    # Composes the checkpoint's task when none is named; errors about the input are one line.
    run_tool(main, config_name="benchmark", task_from_checkpoint=True)
