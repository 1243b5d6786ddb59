"""``alps pretrain | finetune | evaluate``: flags map one-to-one onto :class:`alps.train.TrainConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from alps.train.config import TrainConfig, merge, read_yaml


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field; defaults are suppressed so only given flags override."""
    from alps.core.config import add_flags

    parser.add_argument(
        "data",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="DATA",
        help="dataset folder (alps label, mmseg or images/masks layout)",
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="YAML file with any of the options below (flags given on the command line win)",
    )
    add_flags(parser, TrainConfig)


def config_from_args(args: argparse.Namespace, mode: str) -> TrainConfig:
    """Defaults < the run's saved config.yaml (when resuming) < --config YAML < command-line flags."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    from_file = read_yaml(args.config) if getattr(args, "config", None) else {}
    layers: list[dict[str, Any]] = []
    if flags.get("resume") or from_file.get("resume"):
        out = flags.get("out") or from_file.get("out") or TrainConfig.out
        saved = Path(out) / "config.yaml"
        if saved.is_file():
            layers.append({k: v for k, v in read_yaml(saved).items() if k != "resume"})
    return merge(*layers, from_file, flags, {"mode": mode})


def _setup_logging() -> None:
    logger = logging.getLogger("alps")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("alps: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _run_training(args: argparse.Namespace, mode: str) -> int:
    from alps.train.run import train

    _setup_logging()
    config = config_from_args(args, mode)
    if not config.data:
        print(f"alps {mode}: give DATA (or 'data:' in --config)", file=sys.stderr)
        return 2
    result = train(config)
    if not result.is_global_zero:
        return 0
    print(f"{mode} finished at step {result.global_step}: {result.checkpoint}")
    if result.metrics_csv:
        print(f"metrics: {result.metrics_csv}")
    if result.learning_curve:
        print(f"learning curve: {result.learning_curve}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    return _run_training(args, "pretrain")


def _finetune(args: argparse.Namespace) -> int:
    return _run_training(args, "finetune")


def _evaluate(args: argparse.Namespace) -> int:
    from alps.train.metrics import format_table
    from alps.train.run import evaluate, resolve_checkpoint, write_scores_json

    _setup_logging()
    scores = evaluate(
        args.checkpoint,
        args.data,
        split=args.split,
        layout=args.layout,
        class_map=args.class_map,
        device=args.device,
        stride=args.stride,
        batch_size=args.batch_size,
        exclude_from_mean=args.exclude_from_mean,
        axis=args.axis,
        window=args.window,
        volume_slices=args.volume_slices,
    )
    print(format_table(scores))
    if args.json:
        path = write_scores_json(
            scores,
            args.json,
            checkpoint=str(resolve_checkpoint(args.checkpoint)),
            data=str(args.data),
            split=args.split,
        )
        print(f"scores: {path}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``pretrain``, ``finetune`` and ``evaluate`` to the ``alps`` command line."""
    pre = subparsers.add_parser(
        "pretrain",
        help="train a segmentation network on a (pseudo-)labelled dataset",
        description="Train a segmentation network (smp + timm encoder) on a dataset, e.g. the output of "
        "`alps label`. Example: alps pretrain DATA --out runs/pre --arch upernet "
        "--encoder resnet50",
    )
    add_config_flags(pre)
    pre.set_defaults(func=_pretrain)

    fine = subparsers.add_parser(
        "finetune",
        help="fine-tune a pre-trained network with a new head on labelled data",
        description="Load encoder + decoder of a pre-trained run, replace the classification head and train "
        "on a labelled dataset. Example: alps finetune DATA --init runs/pre --num-classes 6 "
        "--out runs/ft --label-fraction 0.1",
    )
    add_config_flags(fine)
    fine.set_defaults(func=_finetune)

    ev = subparsers.add_parser(
        "evaluate",
        help="dataset-level mIoU / OA / mF1 of a checkpoint",
        description="Sliding-window inference over a split and metrics from one accumulated "
        "confusion matrix.",
    )
    ev.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder")
    ev.add_argument("data", metavar="DATA", help="dataset folder")
    ev.add_argument("--split", default="val", choices=("train", "val", "test", "all"))
    ev.add_argument("--layout", default="auto", choices=("auto", "alps", "mmseg", "folders", "volumes"))
    ev.add_argument("--class-map", default=None, help="class map file (folders layout)")
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the scores as JSON")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    ev.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: 2/3 crop)")
    ev.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    ev.add_argument(
        "--exclude-from-mean",
        type=int,
        nargs="*",
        default=[],
        metavar="CLASS",
        help="class indices left out of mIoU/mF1 (e.g. ISPRS clutter)",
    )
    ev.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="volumes: slice axis (default: 2)")
    ev.add_argument("--window", default=None, metavar="CENTER,WIDTH", help="volumes: intensity window")
    ev.add_argument(
        "--volume-slices",
        default="foreground",
        choices=("foreground", "labelled"),
        help="volumes: which slices to score (default: foreground)",
    )
    ev.set_defaults(func=_evaluate)
