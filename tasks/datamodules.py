"""LightningDataModules: wrap the datasets of ``vision_mnv2.data`` with loaders, workers and set-up."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vision_mnv2.data import (
    CocoDetection,
    DatasetError,
    ImageFolderClassification,
    VOCSegmentation,
    classification_eval_transform,
    classification_train_transform,
)
from vision_mnv2.data.checks import CHECK_MODES
from vision_mnv2.data.detection_transforms import SSDEvalTransform, SSDTrainTransform
from vision_mnv2.data.segmentation_transforms import (
    segmentation_collate,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from vision_mnv2.models.normalization import resolve_normalization

__all__ = ["ClassificationDataModule", "DetectionDataModule", "SegmentationDataModule", "detection_collate"]

log = logging.getLogger(__name__)


def seed_transform(dataset, seed: int) -> None:
    """Seed a dataset's augmentation pipeline. albumentations (2.x) gives each pipeline its own
    generators seeded from OS entropy, so without this two runs with the same ``seed`` differ."""
    transform = getattr(dataset, "album_transform", None) or getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(seed) % 2**31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: a function of those alone."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]) & 0x7FFFFFFF


class EpochSeededSampler(DistributedSampler):
    """Training order and augmentation as functions of (seed, epoch, sample) only.

    Yields ``(index, augmentation seed)``. Nothing depends on a generator's state carried from
    epoch to epoch, in the main process or in (persistent) workers, so a run resumed at an epoch
    boundary draws exactly what an uninterrupted run would, with any number of workers. A
    ``DistributedSampler`` (one replica unless torch.distributed is running), so Lightning keeps it
    under DDP and calls ``set_epoch``.
    """

    def __init__(self, dataset, seed: int) -> None:
        if _distributed():
            super().__init__(dataset, shuffle=True, seed=seed)
        else:
            super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)

    def __iter__(self):
        for index in super().__iter__():
            yield index, sample_seed(self.seed, self.epoch, index)


class TrainingSamples(Dataset):
    """Takes the ``(index, seed)`` keys of :class:`EpochSeededSampler`: seeds the dataset's
    augmentation with ``seed``, then returns ``dataset[index]``. A bare index (Lightning's
    ``overfit_batches`` swaps in a sequential sampler) gets the seed of epoch 0 under ``seed``.

    With ``skip_bad`` a sample that fails to load (a file that broke after the set-up checks, or
    decodes wrong past its header) is replaced by the next one, logged and counted in ``replaced``
    (shared with the loader's worker processes), instead of ending a long run. Without, the error
    names the file and ends with ``hint``. Validation never substitutes (it would count an image twice).
    """

    def __init__(
        self, dataset, seed: int, skip_bad: bool = False, replaced=None, hint: str = "", max_tries: int = 16
    ) -> None:
        self.dataset = dataset
        self.seed = seed
        self.tries = max_tries if skip_bad else 1
        self.replaced = replaced if replaced is not None else multiprocessing.Value("q", 0)
        self.hint = hint

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int):
        index, seed = key if isinstance(key, tuple) else (key, sample_seed(self.seed, 0, key))
        seed_transform(self.dataset, seed)
        for attempt in range(self.tries):
            try:
                return self.dataset[(index + attempt) % len(self.dataset)]
            except DatasetError as error:
                if self.tries == 1:
                    raise DatasetError(f"{error}{self.hint}") from None
                with self.replaced.get_lock():
                    self.replaced.value += 1
                    count = self.replaced.value
                log.warning("replaced a training sample that failed to load (%d so far): %s", count, error)
        raise DatasetError(f"{self.tries} training samples in a row failed to load, the last as logged above")


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


class _DataModuleBase(L.LightningDataModule):
    """What every datamodule here shares: a root (optionally generated), loaders, batch settings,
    and the set-up checks of every sample. Subclasses pass these keyword options through.

    Args:
        eval_batch_size: validation batch size (default: ``batch_size``).
        num_workers / pin_memory: loader settings (pinning only where CUDA is available).
        generate: optional ``generate(root)`` that writes a dataset there when it is missing (the
            synthetic defaults); ``None`` for real data, which must already exist.
        skip_bad: leave bad samples out, counted and logged, instead of stopping with an error that
            lists them.
        check_images: ``quick``, ``full`` or ``none`` (see :mod:`vision_mnv2.data.checks`).
    """

    collate_fn: Callable | None = None

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        image_size: int,
        batch_size: int,
        *,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        generate: Callable[[str], Any] | None = None,
        skip_bad: bool = False,
        check_images: str = "quick",
    ) -> None:
        super().__init__()
        if check_images not in CHECK_MODES:
            raise ValueError(f"data.check_images must be one of {CHECK_MODES}, got {check_images!r}")
        self.skip_bad = bool(skip_bad)
        # Base of the training order and augmentation seeds, from the run's seeded generator.
        self.seed = int(torch.randint(2**31, (1,)))
        self.check_images = check_images
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        # Configs give what a training machine wants (8 for COCO); more workers than this machine has
        # cores only slow it down (PyTorch warns it may freeze), so take what is there.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if num_workers > cores:
            log.info(
                "data.num_workers=%d, but this machine has %d cores: using %d loader workers", num_workers, cores, cores
            )
        self.num_workers = min(num_workers, cores)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.generate = generate
        self.train_set = None
        self.val_set = None
        # The epoch whose order the first training loader starts with: a resumed run's next epoch,
        # which the caller (the runner) sets from the checkpoint before fitting.
        self.start_epoch = 0
        # Training samples replaced by skip_bad; a shared counter, since workers do the replacing.
        self._replaced = multiprocessing.Value("q", 0)

    def prepare_data(self) -> None:
        # Runs once per node before set-up: the place to write the synthetic dataset.
        if self.generate is not None:
            self.generate(str(self.root))
        elif not self.root.is_dir():
            raise DatasetError(f"data.root {str(self.root)!r} does not exist")

    def describe(self) -> dict[str, Any]:
        """What a model trained on this data must carry to be used without it: class names (and
        dataset category ids), and ``hints`` about evaluation preprocessing. Sets up the
        validation split if needed."""
        self.setup("validate")
        return {"class_names": list(self.val_set.class_names), "hints": {}}

    @property
    def skipped(self) -> dict[str, int]:
        """Bad samples left out of each split that is set up (``skip_bad``)."""
        sets = {"train": self.train_set, "val": self.val_set}
        return {split: len(dataset.bad) for split, dataset in sets.items() if hasattr(dataset, "bad")}

    @property
    def replaced_samples(self) -> int:
        """Training samples that failed to load during training and were replaced (``skip_bad``)."""
        return int(self._replaced.value)

    def _generate_if_missing(self) -> None:
        if self.generate is not None and not self.root.is_dir():
            self.prepare_data()  # direct use, outside a Trainer

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if shuffle:
            dataset = TrainingSamples(dataset, self.seed, self.skip_bad, self._replaced, self._load_error_hint())
            sampler = EpochSeededSampler(dataset, self.seed)
        else:
            # Under DDP Lightning would give evaluation a DistributedSampler, which pads the split with
            # repeated images so that every process gets as many; each image must count once.
            sampler = None
            if _distributed():
                processes = torch.distributed.get_world_size()
                if len(dataset) < processes:  # every process sees this, so all stop together
                    raise DatasetError(
                        f"the evaluation split has {len(dataset)} image(s), fewer than the {processes} processes; "
                        "evaluate on fewer devices"
                    )
                sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )

    def _load_error_hint(self) -> str:
        # A file can pass the set-up check and still fail to decode: "quick" reads headers and end
        # markers only, so data corrupted in the middle of a JPEG shows when it is decoded.
        hint = ". data.skip_bad=true replaces such samples with the next one and counts them"
        if self.check_images != "full":
            hint += f"; data.check_images=full (now {self.check_images}) decodes every image at set-up to find them all"
        return hint

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # Each process drew its seed from its own generator, which differ with seed=null: their
            # shuffled orders, and so their shards of the data, would overlap. Rank 0's seed counts.
            self.seed = int(trainer.strategy.broadcast(self.seed, src=0))
        log.info("training order and augmentation seed: %d", self.seed)
        loader = self._loader(self.train_set, self.batch_size, shuffle=True)
        # Lightning starts the loader's iterator before it calls set_epoch; with persistent workers
        # that iterator has already drawn its first indices, so a resumed run would replay epoch 0's
        # order in its first epoch. The epoch it starts at is set beforehand.
        loader.sampler.set_epoch(self.start_epoch)
        if len(loader) == 0:
            # Lightning would warn "no training batches", train nothing, write no checkpoint and exit 0.
            raise DatasetError(self._too_few_samples(loader.sampler))
        return loader

    def _too_few_samples(self, sampler: DistributedSampler) -> str:
        samples = f"the training split has {len(self.train_set)} sample(s)"
        if sampler.num_replicas > 1:
            samples += f", {len(sampler)} per process on {sampler.num_replicas} processes"
        skipped = self.skipped.get("train")
        if skipped:
            samples += f" once the {skipped} bad one(s) are left out"
        return (
            f"{samples}: fewer than one batch of data.batch_size={self.batch_size}, and the incomplete last "
            "batch is dropped, so nothing would be trained; lower data.batch_size or add samples"
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ClassificationDataModule(_DataModuleBase):
    """ImageNet-layout classification data.

    Args:
        root: dataset root holding ``train_split`` and ``val_split`` folders.
        image_size: network input resolution; the eval resize scales with it.
        train_crop_scale: area range of the random resized crop.
        crop_fraction: eval centre-crop fraction (0.875 = 224 of 256).
        eval_preprocessing: ``crop`` (resize and centre crop by ``crop_fraction``) or ``resize``
            (the whole image to ``image_size``, as Google's label_image feeds its models).
        num_classes: expected number of classes; checked against the class folders.
        options: loader and checking options shared by every datamodule (:class:`_DataModuleBase`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        image_size: int = 224,
        batch_size: int = 64,
        train_split: str = "train",
        val_split: str = "val",
        train_crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        crop_fraction: float = 0.875,
        eval_preprocessing: str = "crop",
        **options,
    ) -> None:
        super().__init__(root, num_classes, image_size, batch_size, **options)
        self.train_split = train_split
        self.val_split = val_split
        self.train_crop_scale = tuple(train_crop_scale)
        self.hflip = hflip
        self.crop_fraction = crop_fraction
        self.eval_preprocessing = eval_preprocessing

    @property
    def class_names(self) -> list[str]:
        self.setup("fit")
        return list(self.train_set.classes)

    def describe(self) -> dict[str, Any]:
        self.setup("validate")
        return {
            "class_names": list(self.val_set.classes),
            "hints": {
                "image_size": self.image_size,
                "crop_fraction": self.crop_fraction,
                "mode": self.eval_preprocessing,
            },
        }

    def setup(self, stage: str | None = None) -> None:
        self._generate_if_missing()
        if self.train_set is None and (self.root / self.train_split).is_dir():
            self.train_set = ImageFolderClassification(
                self.root,
                self.train_split,
                classification_train_transform(self.image_size, self.train_crop_scale, self.hflip),
                skip_bad=self.skip_bad,
                check_images=self.check_images,
            )
            if len(self.train_set.classes) != self.num_classes:
                raise DatasetError(
                    f"{self.root / self.train_split} has {len(self.train_set.classes)} class folders "
                    f"but data.num_classes is {self.num_classes}"
                )
        if self.val_set is None:
            expected = self.train_set.classes if self.train_set is not None else None
            self.val_set = ImageFolderClassification(
                self.root,
                self.val_split,
                classification_eval_transform(self.image_size, self.crop_fraction, self.eval_preprocessing),
                classes=expected,
                skip_bad=self.skip_bad,
                check_images=self.check_images,
            )
            if len(self.val_set.classes) != self.num_classes:
                raise DatasetError(
                    f"{self.root / self.val_split} has {len(self.val_set.classes)} class folders "
                    f"but data.num_classes is {self.num_classes}"
                )
        if stage == "fit" and self.train_set is None:
            raise DatasetError(f"training split folder {str(self.root / self.train_split)!r} does not exist")


def detection_collate(batch):
    """Detection batches are lists: images differ in size and hold different numbers of boxes."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class DetectionDataModule(_DataModuleBase):
    """COCO-format detection data (``train2017/``, ``val2017/``, ``annotations/instances_*.json``
    by default; every path can be set for a custom dataset).

    Args:
        root: dataset root; the image folders and annotation files are relative to it.
        num_classes: expected number of categories, checked against the annotation file.
        image_size: the detector's square input, for the training augmentation.
        augment: keyword arguments of ``SSDTrainTransform`` (zoom-out, crop, flip, ...).
        options: loader and checking options shared by every datamodule (:class:`_DataModuleBase`).
    """

    collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        image_size: int = 320,
        batch_size: int = 24,
        train_images: str = "train2017",
        val_images: str = "val2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_annotations: str = "annotations/instances_val2017.json",
        augment: dict | None = None,
        **options,
    ) -> None:
        super().__init__(root, num_classes, image_size, batch_size, **options)
        self.paths = {
            "train": (self.root / train_images, self.root / train_annotations),
            "val": (self.root / val_images, self.root / val_annotations),
        }
        self.augment = dict(augment or {})

    def describe(self) -> dict[str, Any]:
        self.setup("validate")
        mapping = self.val_set.label_to_category_id
        return {
            "class_names": list(self.val_set.class_names),
            "category_ids": [int(mapping[label]) for label in sorted(mapping)],
            "hints": {},
        }

    def coco_ground_truth(self) -> dict[str, Any]:
        """The validation split's annotations as COCOeval scores them: a COCO-format dict of images,
        annotations (crowd boxes included, each with its own ``area`` and ``iscrowd``, boxes as
        annotated) and categories, once the set-up checks have left out what is malformed."""
        self.setup("validate")
        return self.val_set.ground_truth()

    def _dataset(self, split: str, transform) -> CocoDetection:
        images, annotations = self.paths[split]
        dataset = CocoDetection(images, annotations, transform, self.skip_bad, self.check_images)
        if dataset.num_classes != self.num_classes:
            raise DatasetError(
                f"{annotations} lists {dataset.num_classes} categories but data.num_classes is {self.num_classes}"
            )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        self._generate_if_missing()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._dataset("train", SSDTrainTransform(self.image_size, **self.augment))
        if self.val_set is None:
            self.val_set = self._dataset("val", SSDEvalTransform())
            if self.train_set is not None and self.train_set.class_names != self.val_set.class_names:
                raise DatasetError(
                    f"categories of {self.paths['val'][1]} {self.val_set.class_names} differ from "
                    f"{self.paths['train'][1]} {self.train_set.class_names}"
                )


class SegmentationDataModule(_DataModuleBase):
    """Semantic segmentation data in the Pascal VOC layout (``JPEGImages/``, ``SegmentationClass/``,
    ``ImageSets/Segmentation/<split>.txt``); SBD's ``train_aug`` by ``train_split`` and ``mask_dir``.

    Args:
        root: the ``VOC2012`` folder (or a user's folder in that layout).
        num_classes: classes including the background.
        image_size: the training crop (513 in DeepLab's VOC recipe).
        scale: random scale range of the training augmentation.
        eval_pad_size: validation images are padded (ignored pixels) to this size so that batches
            stack; ``None`` when they all have one size already.
        class_names: names in label order; default ``class_names.txt`` in ``root``, else VOC's.
        normalization: the model's input normalisation (``model.normalization``); padding is its
            mean pixel, which the network sees as zero.
        options: loader and checking options shared by every datamodule (:class:`_DataModuleBase`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_classes: int,
        image_size: int = 513,
        batch_size: int = 16,
        train_split: str = "train",
        val_split: str = "val",
        image_dir: str = "JPEGImages",
        mask_dir: str = "SegmentationClass",
        val_mask_dir: str | None = None,
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        eval_pad_size: int | None = 513,
        class_names: list[str] | None = None,
        normalization: str | dict | list | None = "imagenet",
        **options,
    ) -> None:
        super().__init__(root, num_classes, image_size, batch_size, **options)
        self.fill = tuple(255.0 * m for m in resolve_normalization(normalization).mean)
        self.collate_fn = partial(segmentation_collate, fill=self.fill)
        self.splits = {"train": (train_split, mask_dir), "val": (val_split, val_mask_dir or mask_dir)}
        self.image_dir = image_dir
        self.scale = tuple(scale)
        self.hflip = hflip
        self.eval_pad_size = eval_pad_size
        self.class_names = list(class_names) if class_names is not None else None

    def _dataset(self, split: str, transform) -> VOCSegmentation:
        name, mask_dir = self.splits[split]
        return VOCSegmentation(
            self.root,
            name,
            self.num_classes,
            transform,
            self.class_names,
            image_dir=self.image_dir,
            mask_dir=mask_dir,
            skip_bad=self.skip_bad,
            check_images=self.check_images,
        )

    def setup(self, stage: str | None = None) -> None:
        self._generate_if_missing()
        if stage in (None, "fit") and self.train_set is None:
            transform = segmentation_train_transform(self.image_size, self.scale, self.hflip, self.fill)
            self.train_set = self._dataset("train", transform)
        if self.val_set is None:
            self.val_set = self._dataset("val", segmentation_eval_transform(self.eval_pad_size, self.fill))

    def describe(self) -> dict[str, Any]:
        """Besides the classes, the working size prediction brings photos to: the padded size of
        validation (DeepLab's 513), else the median longer side of the validation images, the
        scale the model was scored at."""
        description = super().describe()
        size = self.eval_pad_size or self._median_longer_side(self.val_set.images)
        description["hints"] = {"pad_to": self.eval_pad_size, "resize_size": size}
        return description

    @staticmethod
    def _median_longer_side(images: list[Path]) -> int | None:
        from PIL import Image  # noqa: PLC0415

        sides = []
        for path in images:
            with Image.open(path) as image:  # reads the header only
                sides.append(max(image.size))
        return int(np.median(sides)) if sides else None
