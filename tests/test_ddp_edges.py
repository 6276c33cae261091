"""DDP edges: the processes agree on skipping a step with a non-finite loss, share one training-order
seed when the run has none, and COCOeval runs on rank 0 alone with every process logging its numbers."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys

import torch
import torch.distributed as dist

from vision_mnv2.metrics import CocoMeanAveragePrecision, coco_eval

from .helpers import REPO_ROOT, subprocess_env, tiny_classification_overrides


def test_two_processes_skip_a_nonfinite_step_together_and_share_one_seed(tiny_cls_root, tmp_path):
    """Rank 1 alone has a NaN loss in the first step: Lightning refuses a skipped (None) step under
    DDP, and one process skipping alone would leave the other waiting in the gradient all-reduce.
    With seed=null each process drew its own training-order seed, so their shards overlapped."""
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "tools/train.py", *tiny_classification_overrides(tiny_cls_root),
        "trainer=ddp", "trainer.devices=2", "data.batch_size=4", "trainer.max_epochs=1", "logger=none", "seed=null",
        "module._target_=tests.helpers.NonFiniteOnRankOne", "module.nonfinite_loss=skip", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    # tests.helpers on the path of the processes
    env = subprocess_env(
        tmp_path, processes=2, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = [(run_dir / "train.log").read_text(), (run_dir / "train_ddp_process_1.log").read_text()]
    assert "skipped a step with non-finite loss on another process at epoch 0, step 0, batch 0" in logs[0]
    assert "skipped a step with non-finite loss (nan) at epoch 0, step 0, batch 0" in logs[1]
    seeds = [re.findall(r"training order and augmentation seed: (\d+)", log) for log in logs]
    assert len(seeds[0]) == 1 and seeds[0] == seeds[1]
    metrics = json.loads((run_dir / "train_metrics.json").read_text())["metrics"]
    assert metrics["train/skipped_steps"] == 1.0


IMAGES = range(1, 8)


def _ground_truth() -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in IMAGES],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 3, "bbox": [10, 10, 20 + 5 * i, 30], "area": 600, "iscrowd": 0}
            for i in IMAGES
        ],
        "categories": [{"id": 3, "name": "thing"}],
    }


def _predictions() -> dict[int, dict[str, torch.Tensor]]:
    """A near miss and a wrong box per image, with scores that rank them differently per image."""
    return {
        i: {
            "boxes": torch.tensor([[12.0, 9.0, 30.0 + 5 * i, 41.0], [50.0, 50.0, 90.0, 95.0]]),
            "scores": torch.tensor([0.3 + 0.08 * i, 0.6]),
            "labels": torch.tensor([1, 1]),
        }
        for i in IMAGES
    }


def _evaluate_as_rank(rank: int, rendezvous: str, out: str, results_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    runs = []
    evaluate = coco_eval.evaluate_coco_results
    coco_eval.evaluate_coco_results = lambda *args: runs.append(rank) or evaluate(*args)
    metric = CocoMeanAveragePrecision(_ground_truth(), [3], results_file=results_file)
    predictions = _predictions()
    mine = list(IMAGES)[rank::2]  # 4 images on rank 0, 3 on rank 1
    metric.update([predictions[i] for i in mine[:2]], [{"image_id": i} for i in mine[:2]])
    metric.update([predictions[i] for i in mine[2:]], [{"image_id": i} for i in mine[2:]])
    stats = metric.compute()
    with open(out, "w") as file:
        json.dump({"stats": stats, "cocoeval_runs": len(runs)}, file)
    dist.destroy_process_group()


def test_cocoeval_runs_on_rank_zero_and_every_process_gets_its_numbers(tmp_path):
    reference = CocoMeanAveragePrecision(_ground_truth(), [3])
    predictions = _predictions()
    reference.update([predictions[i] for i in IMAGES], [{"image_id": i} for i in IMAGES])
    expected = reference.compute()
    assert 0 < expected["mAP"] < 1

    fork = multiprocessing.get_context("fork")  # starts at once, torch already imported
    outs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    results_file = tmp_path / "detections.json"
    processes = [
        fork.Process(
            target=_evaluate_as_rank, args=(rank, str(tmp_path / "rendezvous"), str(outs[rank]), str(results_file))
        )
        for rank in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    ranks = [json.loads(out.read_text()) for out in outs]
    assert [r["cocoeval_runs"] for r in ranks] == [1, 0], "COCOeval on rank 0 only"
    assert ranks[0]["stats"] == ranks[1]["stats"] == expected
    detections = json.loads(results_file.read_text())
    assert sorted(d["image_id"] for d in detections) == sorted([*IMAGES, *IMAGES]), "rank 0 wrote every detection"
