"""``tools/quantize.py``: export a checkpoint to ONNX, quantise it to int8 (static, calibrated on
training images) and measure, in the same run, accuracy on the validation split and batch-1 latency
of the fp32 and int8 graphs in onnxruntime. Written to docs/BENCHMARKS.md with the command."""

from __future__ import annotations

import platform
import shlex
import sys
import time
from pathlib import Path

import albumentations as A
import numpy as np
import onnxruntime as ort
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from vision_mnv2.benchmark import time_call
from vision_mnv2.data import classification_eval_transform, read_rgb
from vision_mnv2.data.segmentation_transforms import segmentation_eval_transform
from vision_mnv2.export import detection_postprocess, export_onnx
from vision_mnv2.metrics import CocoEvaluator, segmentation_confusion_matrix, segmentation_scores
from vision_mnv2.quantize import quantize_static_onnx

from .benchmark import _write_section
from .inference import load_model, task_kind

__all__ = ["run_quantize"]

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # the exported graphs normalise inside


class _Task:
    """Per-task input preparation and scoring of ONNX outputs on the validation split."""

    def __init__(self, kind: str, cfg: DictConfig, datamodule, size: int) -> None:
        self.kind, self.cfg, self.size = kind, cfg, size
        self.train, self.val = datamodule.train_set, datamodule.val_set
        if kind == "classification":
            self.transform = classification_eval_transform(size, cfg.data.get("crop_fraction", 0.875), **RAW)
        elif kind == "segmentation":
            self.transform = segmentation_eval_transform(cfg.data.get("eval_pad_size"), **RAW)
        else:
            self.transform = A.Compose([A.Resize(size, size), A.Normalize(**RAW, max_pixel_value=255.0)])

    def _input(self, image: np.ndarray) -> np.ndarray:
        out = self.transform(image=image)["image"]
        array = out.numpy() if torch.is_tensor(out) else np.transpose(out, (2, 0, 1))
        return np.ascontiguousarray(array[None], dtype=np.float32)

    def _raw(self, dataset, index: int) -> np.ndarray:
        if self.kind == "classification":
            return read_rgb(dataset.samples[index][0])
        if self.kind == "segmentation":
            return dataset.load(index)[0]
        return dataset.load_image(dataset.image_ids[index])

    def calibration(self, count: int):
        indices = np.random.default_rng(0).permutation(len(self.train))[:count]
        for index in indices:
            yield self._input(self._raw(self.train, int(index)))

    def sample(self) -> np.ndarray:
        return self._input(self._raw(self.val, 0))

    def score(self, session: ort.InferenceSession) -> dict[str, float]:
        val = self.val
        if self.kind == "classification":
            correct = 0
            for index in range(len(val)):
                (logits,) = session.run(None, {"images": self._input(self._raw(val, index))})
                correct += int(int(logits[0].argmax()) == val.samples[index][1])
            return {"top1": correct / len(val)}
        if self.kind == "segmentation":
            metric = segmentation_confusion_matrix(val.num_classes)
            for index in range(len(val)):
                image, mask = val.load(index)
                (logits,) = session.run(None, {"images": self._input(image)})
                prediction = torch.from_numpy(logits.argmax(1))[:, : mask.shape[0], : mask.shape[1]]
                metric.update(prediction, torch.from_numpy(mask.astype(np.int64))[None])
            return {"mIoU": segmentation_scores(metric.compute())["mIoU"]}
        evaluator = CocoEvaluator(val.coco, val.label_to_category_id)
        head = self.cfg.head
        for index, image_id in enumerate(val.image_ids):
            image = self._raw(val, index)
            boxes, scores, _ = session.run(None, {"images": self._input(image)})
            (detections,) = detection_postprocess(
                torch.from_numpy(boxes),
                torch.from_numpy(scores),
                head.score_thresh,
                head.nms_thresh,
                head.detections_per_img,
            )
            scale = torch.tensor([image.shape[1], image.shape[0]] * 2, dtype=torch.float32) / self.size
            detections["boxes"] = detections["boxes"] * scale
            evaluator.update([int(image_id)], [detections])
        return {"mAP": evaluator.compute()["mAP"]}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_quantize(cfg: DictConfig) -> str:
    kind = task_kind(cfg)
    model, _ = load_model(cfg)
    size = int(cfg.get("export_size") or cfg.data.image_size)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = _Task(kind, cfg, datamodule, size)
    out_dir = Path(cfg.paths.output_dir)
    fp32 = export_onnx(model, kind, out_dir / f"{cfg.task_name}_fp32.onnx", size, dynamic_size=kind == "segmentation")
    count = int(cfg.quantize.calibration_images)
    int8 = quantize_static_onnx(
        fp32, out_dir / f"{cfg.task_name}_int8.onnx", task.calibration(count), method=cfg.quantize.method
    )
    threads = int(cfg.quantize.threads or torch.get_num_threads())
    sessions = {"fp32": _session(fp32, threads), "int8": _session(int8, threads)}
    scores = {name: task.score(session) for name, session in sessions.items()}
    sample = {"images": task.sample()}
    latency = {name: float("inf") for name in sessions}
    for _ in range(int(cfg.quantize.repeats)):  # alternate, keep each one's best median
        for name, session in sessions.items():
            latency[name] = min(
                latency[name], time_call(lambda s=session: s.run(None, sample), 3, int(cfg.quantize.iters)) * 1000
            )
    (metric,) = scores["fp32"]
    sizes = {name: path.stat().st_size / 2**20 for name, path in (("fp32", fp32), ("int8", int8))}
    lines = [
        f"### int8 static quantisation, {cfg.task_name} ({kind}), onnxruntime CPU, {threads} threads",
        "",
        f"Command: `python tools/quantize.py {' '.join(shlex.quote(a) for a in sys.argv[1:] if not a.startswith('hydra.'))}`  ",
        f"Machine: {platform.machine()}; onnxruntime {ort.__version__}; {time.strftime('%Y-%m-%d')}. Calibration: {count} training "
        f"images, {cfg.quantize.method}; QDQ, int8 weights per channel, uint8 activations. Input {tuple(sample['images'].shape)}. "
        f"Accuracy on the {len(task.val)} validation images through the exported graphs (NMS outside for detection).",
        "",
        f"| graph | {metric} | file, MB | latency, ms (batch 1) |",
        "|---|---|---|---|",
    ]
    for name in sessions:
        lines.append(f"| {name} | {scores[name][metric]:.4f} | {sizes[name]:.1f} | {latency[name]:.2f} |")
    lines.append(
        f"| **int8 vs fp32** | **{scores['int8'][metric] - scores['fp32'][metric]:+.4f}** | {sizes['int8'] / sizes['fp32']:.2f}x "
        f"| **{latency['int8'] / latency['fp32']:.2f}x** |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if cfg.quantize.write:
        _write_section(Path(cfg.quantize.output), f"quantization_{cfg.task_name}", text)
    return text
