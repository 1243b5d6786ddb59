"""Training configuration: one dataclass whose fields are the command-line flags and the YAML keys.

The mechanism (flags, YAML, merging) is :mod:`alps.core.config`, shared with ``alps label``.

Precedence when a run starts: dataclass defaults < the run's saved ``config.yaml`` (when resuming)
< ``--config FILE`` < flags given on the command line. The resolved config is written to
``RUN/config.yaml`` so ``alps pretrain --config RUN/config.yaml`` repeats the run exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alps.core.config import from_dict, option, read_config_file, to_yaml

LOSSES = ("ce", "ce+dice")  # training losses; SegmentationModule implements them


@dataclass
class TrainConfig:
    """Everything that defines a pre-training or fine-tuning run."""

    # what to train on, where to write
    data: str = option("", "dataset folder (alps label, mmseg or images/masks layout)", positional=True)
    out: str = option("runs/alps", "run folder (config, checkpoints, metrics.csv, learning_curve.png)")
    mode: str = option("pretrain", "pretrain or finetune (set by the sub-command)", cli=False)
    layout: str = option("auto", "dataset layout", choices=("auto", "alps", "mmseg", "folders", "volumes"))
    class_map: str | None = option(None, "class map file value -> name (JSON, YAML or 'value name' lines)")
    num_classes: int | None = option(None, "number of classes (default: class map, manifest, or inferred)")
    ignore_index: int | None = option(None, "label value to ignore (default: manifest's, else 255)")
    val_fraction: float = option(0.1, "share of images held out for validation when there is no val split")
    label_fraction: float = option(1.0, "keep this deterministic share of the labelled training images")
    label_seed: int = option(0, "seed of the --label-fraction subset (independent of --seed)")
    # volume datasets (imagesTr/ + labelsTr/): sliced like `alps label` slices volumes
    axis: int = option(2, "volumes: voxel axis to slice along (0, 1 or 2)")
    window: str | None = option(
        None, "volumes: intensity window CENTER,WIDTH (default: 0.5-99.5 percentiles)"
    )
    volume_slices: str = option(
        "foreground",
        "volumes: 'foreground' (slices the empty-slice rule keeps) or 'labelled' (slices with a class > 0)",
        choices=("foreground", "labelled"),
    )
    # network
    arch: str = option("upernet", "architecture", choices=("upernet", "deeplabv3plus", "fpn", "unet"))
    encoder: str = option(
        "resnet50", "encoder: smp name or tu-<timm name> (e.g. tu-swin_tiny_patch4_window7_224)"
    )
    encoder_weights: str = option(
        "random", "encoder init: 'random' or a LOCAL weights file (e.g. ImageNet .pth)"
    )
    init: str | None = option(None, "fine-tuning: pre-trained run folder or checkpoint (encoder + decoder)")
    # data pipeline
    crop_size: int = option(512, "training crop and sliding-window size in pixels (multiple of 32)")
    scale_min: float = option(0.5, "smallest random rescale factor")
    scale_max: float = option(2.0, "largest random rescale factor")
    hflip: bool = option(True, "random horizontal flips")
    vflip: bool = option(False, "random vertical flips (useful for aerial imagery)")
    batch_size: int = option(8, "images per device and step")
    num_workers: int = option(2, "data-loading processes per device")
    cache_images: bool = option(False, "keep decoded images in memory (small datasets)")
    # optimisation
    loss: str = option(
        "ce",
        "training loss: 'ce' (cross-entropy) or 'ce+dice' (plus soft Dice: small structures, e.g. lesions)",
        choices=LOSSES,
    )
    optimizer: str = option("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = option(3e-4, "peak learning rate")
    weight_decay: float = option(1e-4, "weight decay")
    warmup_steps: int = option(0, "linear warm-up steps before the poly decay")
    max_steps: int = option(2000, "optimizer steps in total")
    seed: int = option(0, "random seed (weights init, augmentation, data order)")
    # evaluation, checkpoints, logging
    val_every: int = option(500, "validate every N steps (and at the end); 0 = only at the end, -1 = never")
    eval_stride: int | None = option(None, "sliding-window stride (default: 2/3 of --crop-size)")
    checkpoint_every: int = option(500, "save a checkpoint every N steps (plus last.ckpt)")
    keep_checkpoints: int = option(2, "how many step checkpoints to keep (-1 = all)")
    log_every: int = option(10, "log training metrics every N steps")
    progress: bool = option(True, "show a progress bar")
    resume: str | None = option(
        None,
        "resume: 'last' (RUN/checkpoints/last.ckpt, what a bare --resume means: give DATA before it) "
        "or a checkpoint path",
        const="last",
        metavar="CKPT",
    )
    # hardware (Lightning)
    accelerator: str = option("auto", "cpu, gpu, mps or auto")
    devices: str = option("auto", "devices per node: auto, a count, or a list like 0,1")
    num_nodes: int = option(1, "number of nodes for multi-node DDP")
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
    precision: str = option(
        "auto", "auto (bf16/16-mixed on GPUs that support it, else 32), 32-true, 16-mixed, bf16-mixed"
    )

    def __post_init__(self) -> None:
        if self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32, got {self.crop_size}")
        if self.mode not in ("pretrain", "finetune"):
            raise ValueError(f"mode must be pretrain or finetune, got {self.mode!r}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.scale_min > self.scale_max:
            raise ValueError("scale_min must not exceed scale_max")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. parsed YAML); unknown keys are an error, ``-`` in keys is accepted."""
        clean = dict(values)
        if clean.get("devices") is not None:
            clean["devices"] = str(clean["devices"])
        return from_dict(cls, clean)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Keys of a YAML config file (empty file → empty dict)."""
    return read_config_file(path)


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(to_yaml(config))


def merge(*layers: dict[str, Any]) -> TrainConfig:
    """Config from dicts applied left to right over the defaults (later layers win)."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k.replace("-", "_"): v for k, v in layer.items()})
    return TrainConfig.from_dict(values)


def parse_devices(devices: str) -> int | str | list[int]:
    """Lightning ``devices`` from a flag value: ``auto``, ``2``, ``0,1`` or ``-1``."""
    text = str(devices).strip()
    if text == "auto":
        return "auto"
    if "," in text:
        return [int(d) for d in text.split(",") if d.strip()]
    return int(text)
