"""Front doors of the training half: :func:`pretrain`, :func:`finetune`, :func:`evaluate`.

A run folder holds everything needed to repeat or continue it::

    RUN/config.yaml          resolved TrainConfig (``alps pretrain --config RUN/config.yaml`` repeats it)
    RUN/dataset.json         layout, classes, normalisation mean/std, the image ids trained/validated on
    RUN/checkpoints/         step-NNNNNN.ckpt every --checkpoint-every steps, last.ckpt (for --resume)
    RUN/model.ckpt           final weights + hyper-parameters (what evaluate / finetune --init read)
    RUN/logs/version_N/      Lightning's CSV log of each session (a resumed run adds a version)
    RUN/metrics.csv          all sessions merged by step
    RUN/learning_curve.png   train loss and validation mIoU against steps
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from alps.core.config import to_yaml
from alps.core.files import write_text
from alps.train.config import TrainConfig, parse_devices
from alps.train.data import (
    EvalDataset,
    SegmentationData,
    TrainDataset,
    compute_norm_stats,
    load_segmentation_data,
    subset_fraction,
)
from alps.train.inference import predict
from alps.train.metrics import SegmentationScores, confusion_matrix, scores_from_confusion
from alps.train.models import load_encoder_weights, load_pretrained_network

log = logging.getLogger(__name__)


class _DropAdverts(logging.Filter):
    """Drop the advert for a hosted logging service that Lightning prints at every Trainer start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdverts())


@dataclass
class RunResult:
    """Where a finished run left its outputs."""

    run_dir: Path
    checkpoint: Path
    global_step: int
    metrics_csv: Path | None
    learning_curve: Path | None
    is_global_zero: bool = True  # False in the other processes of a distributed run


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file from a run folder (``model.ckpt``, else ``checkpoints/last.ckpt``) or a file path."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    for candidate in (path / "model.ckpt", path / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no checkpoint at {path} (expected a .ckpt file or a run folder with model.ckpt)"
    )


def _resume_path(config: TrainConfig, run_dir: Path) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume last: {path} does not exist")
        return path
    path = Path(config.resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {path} not found")
    return path


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _checkpoint_hparams(path: Path) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    return dict(hparams or {})


#: environment variables that hold a process's rank under torchrun, Lightning's DDP launcher, SLURM, LSF
RANK_VARIABLES = ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_global_zero() -> bool:
    """True in the process of global rank 0 (or a single-process run): none of
    :data:`RANK_VARIABLES` is set to anything but 0. Decided before the Trainer exists, so the run
    folder's records are written once, not once per DDP process."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def _dataset_record(
    config: TrainConfig,
    data: SegmentationData,
    train_ids: list[str],
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    return {
        "root": str(data.root),
        "layout": data.layout,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "ignore_index": data.ignore_index,
        "mean": list(mean),
        "std": list(std),
        "label_fraction": config.label_fraction,
        "label_seed": config.label_seed,
        "train_ids": train_ids,
        "val_ids": [s.id for s in data.val],
        "notes": data.notes,
    }


def train(config: TrainConfig) -> RunResult:
    """Pre-train (``config.mode == "pretrain"``) or fine-tune a network; see the module docstring for outputs.

    Fine-tuning loads encoder and decoder from ``config.init`` and trains a new ``num_classes`` head;
    its architecture and encoder are taken from that checkpoint.
    """
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_path(config, run_dir)
    config, init_ckpt = _finetune_init(config)
    data, train_samples = _training_data(config)
    mean, std = _norm_stats(run_dir, resume, train_samples)
    if is_global_zero():  # every DDP process gets here; one writes the run's records
        write_text(
            run_dir / "dataset.json",
            json.dumps(_dataset_record(config, data, [s.id for s in train_samples], mean, std), indent=1),
        )
        write_text(run_dir / "config.yaml", to_yaml(config))
    module = _build_module(config, data, mean, std, resume, init_ckpt)
    train_loader, val_loader = _loaders(config, data, train_samples, mean, std)
    val_every = min(max(config.val_every, 0) or config.max_steps, config.max_steps)
    trainer = _trainer(config, run_dir, val_loader is not None, val_every)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # crops are sampled at random, so restarting the loader mid-"epoch" loses nothing
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
        if val_loader is not None and trainer.global_step % val_every:
            trainer.validate(module, val_loader, verbose=False)
    trainer.save_checkpoint(run_dir / "model.ckpt", weights_only=True)

    metrics_csv = curve = None
    if trainer.is_global_zero:
        metrics_csv = merge_metrics(run_dir)
        curve = plot_learning_curve(run_dir) if metrics_csv else None
    return RunResult(
        run_dir, run_dir / "model.ckpt", trainer.global_step, metrics_csv, curve, trainer.is_global_zero
    )


def _finetune_init(config: TrainConfig) -> tuple[TrainConfig, Path | None]:
    """Fine-tuning: the pre-trained checkpoint, and the config with its architecture and encoder."""
    if config.mode != "finetune":
        return config, None
    if not config.init:
        raise ValueError("fine-tuning needs --init (a pre-trained run folder or checkpoint)")
    init_ckpt = resolve_checkpoint(config.init)
    hp = _checkpoint_hparams(init_ckpt)
    if hp.get("arch") and (hp["arch"], hp["encoder"]) != (config.arch, config.encoder):
        log.info("fine-tuning uses the pre-trained network: arch=%s encoder=%s", hp["arch"], hp["encoder"])
        config = config.replace(arch=hp["arch"], encoder=hp["encoder"])
    return config, init_ckpt


def _training_data(config: TrainConfig) -> tuple[Any, list[Any]]:
    """The indexed dataset and the training samples (the --label-fraction subset)."""
    data = load_segmentation_data(
        config.data, config.layout, config.class_map, config.num_classes, config.ignore_index,
        config.val_fraction, axis=config.axis, window=config.window, volume_slices=config.volume_slices,
    )  # fmt: skip
    for note in data.notes:
        log.warning("%s", note)
    train_samples = data.train
    if config.label_fraction < 1:
        train_samples = subset_fraction(data.train, config.label_fraction, config.label_seed)
        log.info(
            "label fraction %.3g: %d of %d training images",
            config.label_fraction, len(train_samples), len(data.train),
        )  # fmt: skip
    return data, train_samples


def _norm_stats(run_dir: Path, resume: Path | None, samples: list[Any]) -> tuple[Any, Any]:
    """Per-channel mean and std of the training images (a resumed run keeps the recorded ones)."""
    record_path = run_dir / "dataset.json"
    if resume is not None and record_path.is_file():
        saved = json.loads(record_path.read_text())
        return saved["mean"], saved["std"]
    return compute_norm_stats([s.image for s in samples])


def _build_module(
    config: TrainConfig, data: Any, mean: Any, std: Any, resume: Path | None, init_ckpt: Path | None
) -> Any:
    """The Lightning module, initialised from the pre-trained run or encoder weights (fresh runs)."""
    import lightning as L

    from alps.train.module import SegmentationModule

    L.seed_everything(config.seed, workers=True, verbose=False)
    module = SegmentationModule(
        arch=config.arch, encoder=config.encoder, num_classes=data.num_classes, crop_size=config.crop_size,
        mean=mean, std=std, class_names=data.class_names, ignore_index=data.ignore_index,
        optimizer=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps, max_steps=config.max_steps, eval_stride=config.eval_stride,
        loss=config.loss,
    )  # fmt: skip
    if resume is None:
        if init_ckpt is not None:
            report = load_pretrained_network(module.net, init_ckpt)
            log.info("encoder + decoder from %s: %s", init_ckpt, report)
        elif config.encoder_weights != "random":
            log.info("encoder weights: %s", load_encoder_weights(module.net, config.encoder_weights))
    return module


def _loaders(
    config: TrainConfig, data: Any, train_samples: list[Any], mean: Any, std: Any
) -> tuple[DataLoader, DataLoader | None]:
    """Random-crop training loader and whole-image validation loader (None without a val split)."""
    devices = parse_devices(config.devices)
    per_step = config.batch_size * (devices if isinstance(devices, int) and devices > 0 else 1)
    train_set = TrainDataset(
        train_samples, mean, std, config.crop_size, (config.scale_min, config.scale_max), config.hflip,
        config.vflip, data.ignore_index, data.value_lut, min_length=per_step * 20, cache=config.cache_images,
    )  # fmt: skip
    loader_kw: dict[str, Any] = {
        "num_workers": config.num_workers,
        "persistent_workers": config.num_workers > 0,
    }
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, drop_last=True, **loader_kw
    )
    val_loader = None
    if data.val and config.val_every >= 0:
        val_set = EvalDataset(data.val, mean, std, data.value_lut, cache=config.cache_images)
        val_loader = DataLoader(val_set, batch_size=1, shuffle=False, **loader_kw)
    return train_loader, val_loader


def _trainer(config: TrainConfig, run_dir: Path, validate: bool, val_every: int) -> Any:
    """The Lightning trainer: step checkpoints + last.ckpt, CSV logs, learning-rate monitor."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    checkpointer = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step-{step:06d}", auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint_every, save_top_k=config.keep_checkpoints, monitor="step",
        mode="max", save_last=True,
    )  # fmt: skip

    class FinalCheckpoint(Callback):
        """Also write last.ckpt after the final step (where ModelCheckpoint writes its own)."""

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step >= config.max_steps:
                trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)

    return L.Trainer(
        accelerator=config.accelerator, devices=parse_devices(config.devices), num_nodes=config.num_nodes,
        strategy=config.strategy, precision=_precision(config),  # type: ignore[arg-type]
        max_steps=config.max_steps, max_epochs=-1, val_check_interval=val_every if validate else None,
        check_val_every_n_epoch=None, limit_val_batches=None if validate else 0,
        logger=CSVLogger(save_dir=run_dir, name="logs"),
        callbacks=[checkpointer, FinalCheckpoint(), LearningRateMonitor()],
        log_every_n_steps=config.log_every,
        enable_progress_bar=config.progress, enable_model_summary=False, default_root_dir=run_dir,
        num_sanity_val_steps=0,
    )  # fmt: skip


def pretrain(config: TrainConfig) -> RunResult:
    """Train a network from scratch (or from local encoder weights) on a (pseudo-)labelled dataset."""
    return train(config.replace(mode="pretrain"))


def finetune(config: TrainConfig) -> RunResult:
    """Fine-tune a pre-trained network (``config.init``) with a new head on a labelled dataset."""
    return train(config.replace(mode="finetune"))


# --------------------------------------------------------------------------- metrics files


def merge_metrics(run_dir: str | Path) -> Path | None:
    """Merge ``RUN/logs/version_*/metrics.csv`` into ``RUN/metrics.csv``.

    A later session (a resumed run) replaces the rows of earlier ones from its first step on.
    """
    run_dir = Path(run_dir)
    sessions = sorted(
        (run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])
    )
    rows: list[dict[str, str]] = []
    for path in sessions:
        with path.open(newline="") as fh:
            new = list(csv.DictReader(fh))
        if not new:
            continue
        first = min(int(r["step"]) for r in new)
        rows = [r for r in rows if int(r["step"]) < first] + new
    if not rows:
        return None
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    out = run_dir / "metrics.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return out


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metric -> [(step, value), ...]`` from a metrics CSV (empty cells skipped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def plot_learning_curve(run_dir: str | Path) -> Path:
    """Draw ``RUN/learning_curve.png``: training loss (left axis) and validation mIoU (right) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    series = read_metrics(run_dir / "metrics.csv")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if "train/loss" in series:
        steps, values = zip(*series["train/loss"], strict=True)
        ax.plot(steps, values, color="tab:blue", label="train loss")
    if "val/loss" in series:
        steps, values = zip(*series["val/loss"], strict=True)
        ax.plot(steps, values, "o--", color="tab:cyan", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    handles, labels = ax.get_legend_handles_labels()
    if "val/miou" in series:
        right = ax.twinx()
        steps, values = zip(*series["val/miou"], strict=True)
        right.plot(steps, [100 * v for v in values], "s-", color="tab:red", label="val mIoU")
        right.set_ylabel("mIoU (%)")
        more_h, more_l = right.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    if handles:
        ax.legend(handles, labels, loc="best")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    out = run_dir / "learning_curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- evaluation


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "val",
    layout: str = "auto",
    class_map: str | Path | None = None,
    device: str = "auto",
    stride: int | None = None,
    batch_size: int = 4,
    exclude_from_mean: Sequence[int] = (),
    axis: int = 2,
    window: str | None = None,
    volume_slices: str = "foreground",
) -> SegmentationScores:
    """Score a checkpoint on a dataset split with sliding-window inference.

    One confusion matrix is accumulated over every image of the split; mIoU, OA, mF1 and per-class IoU
    follow from it (:func:`alps.train.metrics.scores_from_confusion`). Images are normalised with the
    statistics saved in the checkpoint and tiled at its training crop size. ``axis``, ``window`` and
    ``volume_slices`` slice a volume dataset (``imagesTr/`` + ``labelsTr/``); pass the values used
    for training.
    """
    from alps.train.module import SegmentationModule

    path = resolve_checkpoint(checkpoint)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    module = SegmentationModule.load_from_checkpoint(path, map_location=dev)
    module.eval()
    hp = module.hparams
    k = int(hp["num_classes"])
    ds = load_segmentation_data(
        data,
        layout,
        class_map,
        num_classes=k,
        ignore_index=hp["ignore_index"],
        axis=axis,
        window=window,
        volume_slices=volume_slices,
    )
    samples = ds.split(split)
    if not samples:
        raise ValueError(f"{data}: split {split!r} has no images")
    dataset = EvalDataset(samples, hp["mean"], hp["std"], ds.value_lut)
    cm = torch.zeros(k, k, dtype=torch.long)
    autocast = dev.type == "cuda"
    for index in range(len(dataset)):
        image, label, _ = dataset[index]
        with torch.autocast(
            dev.type,
            enabled=autocast,
            dtype=torch.bfloat16 if autocast and torch.cuda.is_bf16_supported() else None,
        ):
            pred = predict(
                module, image[None].to(dev), k, int(hp["crop_size"]), stride or hp["eval_stride"], batch_size
            )
        cm += confusion_matrix(pred[0].cpu(), label, k, int(hp["ignore_index"]))
    return scores_from_confusion(cm, module.class_names, exclude_from_mean)


def write_scores_json(scores: SegmentationScores, path: str | Path, **extra: Any) -> Path:
    """Write scores as JSON: ``miou``, ``oa``, ``mf1``, ``per_class_iou`` (+ F1/accuracy, names, extras)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**scores.as_dict(), **extra}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False))
    return path


__all__ = [
    "RunResult",
    "evaluate",
    "finetune",
    "merge_metrics",
    "plot_learning_curve",
    "pretrain",
    "resolve_checkpoint",
    "train",
    "write_scores_json",
]
