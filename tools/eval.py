"""Evaluate a checkpoint: ``python tools/eval.py ckpt_path=PATH [data=... data.root=...]``.

Task and model come from the checkpoint; the data too when it was trained here. Prints the metrics
and writes ``metrics.json`` into the run folder."""

from omegaconf import DictConfig

from tasks.cli import run_tool


def main(cfg: DictConfig) -> None:
    from tasks.runner import evaluate  # noqa: PLC0415  (torch and Lightning load after Hydra has handled --help)

    evaluate(cfg)


if __name__ == "__main__":
    # Composes the checkpoint's task when none is named; errors about the input are one line.
    run_tool(main, config_name="eval", task_from_checkpoint=True)
