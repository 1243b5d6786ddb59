"""Training configuration: one dataclass whose fields are the command-line flags and the YAML keys.

Precedence when a run starts: dataclass defaults < the run's saved ``config.yaml`` (when resuming)
< ``--config FILE`` < flags given on the command line. The resolved config is written to
``RUN/config.yaml`` so ``alps pretrain --config RUN/config.yaml`` repeats the run exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOSSES = ("ce", "ce+dice")  # training losses; SegmentationModule implements them


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that defines a pre-training or fine-tuning run."""

    # what to train on, where to write
    data: str = _opt("", "dataset folder (alps label, mmseg or images/masks layout)", positional=True)
    out: str = _opt("runs/alps", "run folder (config, checkpoints, metrics.csv, learning_curve.png)")
    mode: str = _opt("pretrain", "pretrain or finetune (set by the sub-command)", cli=False)
    layout: str = _opt("auto", "dataset layout", choices=("auto", "alps", "mmseg", "folders", "volumes"))
    class_map: str | None = _opt(None, "class map file value -> name (JSON, YAML or 'value name' lines)")
    num_classes: int | None = _opt(None, "number of classes (default: class map, manifest, or inferred)")
    ignore_index: int | None = _opt(None, "label value to ignore (default: manifest's, else 255)")
    val_fraction: float = _opt(0.1, "share of images held out for validation when there is no val split")
    label_fraction: float = _opt(1.0, "keep this deterministic share of the labelled training images")
    label_seed: int = _opt(0, "seed of the --label-fraction subset (independent of --seed)")
    # volume datasets (imagesTr/ + labelsTr/): sliced like `alps label` slices volumes
    axis: int = _opt(2, "volumes: voxel axis to slice along (0, 1 or 2)")
    window: str | None = _opt(None, "volumes: intensity window CENTER,WIDTH (default: 0.5-99.5 percentiles)")
    volume_slices: str = _opt(
        "foreground",
        "volumes: 'foreground' (slices the empty-slice rule keeps) or 'labelled' (slices with a class > 0)",
        choices=("foreground", "labelled"),
    )
    # network
    arch: str = _opt("upernet", "architecture", choices=("upernet", "deeplabv3plus", "fpn", "unet"))
    encoder: str = _opt(
        "resnet50", "encoder: smp name or tu-<timm name> (e.g. tu-swin_tiny_patch4_window7_224)"
    )
    encoder_weights: str = _opt(
        "random", "encoder init: 'random' or a LOCAL weights file (e.g. ImageNet .pth)"
    )
    init: str | None = _opt(None, "fine-tuning: pre-trained run folder or checkpoint (encoder + decoder)")
    # data pipeline
    crop_size: int = _opt(512, "training crop and sliding-window size in pixels (multiple of 32)")
    scale_min: float = _opt(0.5, "smallest random rescale factor")
    scale_max: float = _opt(2.0, "largest random rescale factor")
    hflip: bool = _opt(True, "random horizontal flips")
    vflip: bool = _opt(False, "random vertical flips (useful for aerial imagery)")
    batch_size: int = _opt(8, "images per device and step")
    num_workers: int = _opt(2, "data-loading processes per device")
    cache_images: bool = _opt(False, "keep decoded images in memory (small datasets)")
    # optimisation
    loss: str = _opt(
        "ce",
        "training loss: 'ce' (cross-entropy) or 'ce+dice' (plus soft Dice: small structures, e.g. lesions)",
        choices=LOSSES,
    )
    optimizer: str = _opt("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = _opt(3e-4, "peak learning rate")
    weight_decay: float = _opt(1e-4, "weight decay")
    warmup_steps: int = _opt(0, "linear warm-up steps before the poly decay")
    max_steps: int = _opt(2000, "optimizer steps in total")
    seed: int = _opt(0, "random seed (weights init, augmentation, data order)")
    # evaluation, checkpoints, logging
    val_every: int = _opt(500, "validate every N steps (and at the end); 0 = only at the end, -1 = never")
    eval_stride: int | None = _opt(None, "sliding-window stride (default: 2/3 of --crop-size)")
    checkpoint_every: int = _opt(500, "save a checkpoint every N steps (plus last.ckpt)")
    keep_checkpoints: int = _opt(2, "how many step checkpoints to keep (-1 = all)")
    log_every: int = _opt(10, "log training metrics every N steps")
    progress: bool = _opt(True, "show a progress bar")
    resume: str | None = _opt(
        None,
        "resume: 'last' (RUN/checkpoints/last.ckpt, what a bare --resume means: give DATA before it) "
        "or a checkpoint path",
    )
    # hardware (Lightning)
    accelerator: str = _opt("auto", "cpu, gpu, mps or auto")
    devices: str = _opt("auto", "devices per node: auto, a count, or a list like 0,1")
    num_nodes: int = _opt(1, "number of nodes for multi-node DDP")
    strategy: str = _opt("auto", "Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
    precision: str = _opt(
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
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        if "devices" in clean and clean["devices"] is not None:
            clean["devices"] = str(clean["devices"])
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Keys of a YAML config file (empty file → empty dict)."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option: value")
    return values


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


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
