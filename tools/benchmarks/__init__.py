"""Side-by-side measurements: each module is one benchmark, its body and its command line together
(``python tools/benchmarks/<name>.py --help``), measuring this project against a reference in the
same run so that the ratio holds on a shared machine. Each report starts with the same header
(:func:`vision_mnv2.reports.report_header`) and replaces its section of docs/BENCHMARKS.md only with
``--update-docs``.

* ``against_torchvision`` - a task's network against torchvision's (the user's command
  ``python tools/benchmark.py``, a Hydra tool; this is its body).
* ``coco_scale`` - COCO-sized data: set-up, loader-worker memory and throughput.
* ``coco_scoring`` - a detection validation epoch with faster-coco-eval against pycocotools.
* ``data_safeguards`` - set-up image checks and per-sample seeding against decoding and loading.
* ``finetune`` - every fine-tuning preset against its reference recipe, on each photo set of a
  folder (the task from the set's layout), with a summary against the targets; runs the three below.
* ``finetune_classification`` - the classification fine-tuning preset against torchvision's tutorial.
* ``finetune_detection`` - the SSDLite fine-tuning preset against torchvision's SSD training
  reference (its ssdlite320 recipe) on the same network.
* ``finetune_segmentation`` - the DeepLabv3 fine-tuning preset against torchvision's segmentation
  reference recipe (DeepLabHead on MobileNetV2).
* ``memory_efficient`` - memory-efficient inference (paper section 5.1) against the standard path.
* ``mobile_int8`` - int8 ExecuTorch programs against Google's int8 TFLite files.
* ``ssd_augmentation`` - SSD training augmentation against another implementation of it.
* ``ssd_recipes`` - SSDLite's training recipe against TF's.
"""
