"""End to end through the CLI on real images: pretrain -> finetune -> evaluate, and resuming a run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from alps.cli import main
from alps.train.run import read_metrics

TINY = [
    "--arch",
    "unet",
    "--encoder",
    "resnet18",
    "--crop-size",
    "64",
    "--batch-size",
    "2",
    "--num-workers",
    "0",
    "--no-progress",
    "--scale-min",
    "0.75",
    "--scale-max",
    "1.25",
    "--log-every",
    "1",
]


@pytest.fixture(scope="module")
def pretrained_run(pseudo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "pre"
    code = main(
        [
            "pretrain",
            str(pseudo_dataset),
            "--out",
            str(run),
            *TINY,
            "--max-steps",
            "3",
            "--val-every",
            "3",
            "--checkpoint-every",
            "2",
            "--keep-checkpoints",
            "-1",
        ]
    )
    assert code == 0
    return run


@pytest.mark.slow
def test_pretrain_writes_a_complete_run(pretrained_run: Path) -> None:
    for name in (
        "config.yaml",
        "dataset.json",
        "model.ckpt",
        "checkpoints/last.ckpt",
        "checkpoints/step-000002.ckpt",
        "metrics.csv",
        "learning_curve.png",
    ):
        assert (pretrained_run / name).is_file(), name
    record = json.loads((pretrained_run / "dataset.json").read_text())
    assert record["num_classes"] == 4 and len(record["mean"]) == 3 and len(record["train_ids"]) == 8
    series = read_metrics(pretrained_run / "metrics.csv")
    assert len(series["train/loss"]) == 3 and len(series["val/miou"]) == 1
    hp = torch.load(pretrained_run / "model.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["num_classes"] == 4 and hp["mean"] == record["mean"]


@pytest.mark.slow
def test_finetune_then_evaluate(
    pretrained_run: Path, tree_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "ft"
    code = main(
        [
            "finetune",
            str(tree_dataset),
            "--init",
            str(pretrained_run),
            "--num-classes",
            "2",
            "--out",
            str(run),
            "--label-fraction",
            "0.5",
            *TINY,
            "--max-steps",
            "2",
            "--val-every",
            "0",
        ]
    )
    assert code == 0
    record = json.loads((run / "dataset.json").read_text())
    assert len(record["train_ids"]) == 2 and record["class_names"] == ["not_tree", "tree"]
    hp = torch.load(run / "model.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["num_classes"] == 2 and hp["arch"] == "unet"

    capsys.readouterr()
    assert main(["evaluate", str(run), str(tree_dataset), "--json", str(tmp_path / "scores.json")]) == 0
    table = capsys.readouterr().out
    assert "tree" in table and "mIoU" in table
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert {"miou", "oa", "mf1", "per_class_iou"} <= set(scores)
    assert len(scores["per_class_iou"]) == 2 and 0 <= scores["oa"] <= 1
    assert scores["num_pixels"] == 4 * 96 * 96  # every val pixel is labelled in this dataset


@pytest.mark.slow
def test_resumed_run_continues_from_its_checkpoint(pretrained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(pretrained_run, run)
    before = _lr_by_step(run / "logs" / "version_0" / "metrics.csv")
    # as if the run had died after step 2: resume from that checkpoint
    code = main(
        [
            "pretrain",
            "--out",
            str(run),
            "--resume",
            str(run / "checkpoints" / "step-000002.ckpt"),
            "--no-progress",
        ]
    )
    assert code == 0
    after = _lr_by_step(run / "logs" / "version_1" / "metrics.csv")
    assert min(after) == 2  # continued at step 2, not from scratch
    assert after[2] == pytest.approx(before[2])  # optimizer + LR schedule state restored
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    # a finished run is extended with --resume (last.ckpt) and more steps
    assert main(["pretrain", "--out", str(run), "--resume", "--max-steps", "4", "--no-progress"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]


def _lr_by_step(path: Path) -> dict[int, float]:
    rows = csv.DictReader(path.open())
    return {int(r["step"]): float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")}


@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),
        ({"RANK": "1"}, False),
        ({"LOCAL_RANK": "0"}, True),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
        ({"SLURM_PROCID": "3"}, False),
    ],
)
def test_is_global_zero_reads_the_launchers_rank(
    env: dict, zero: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alps.train.run import RANK_VARIABLES, is_global_zero

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_global_zero() is zero


def test_only_rank_zero_writes_the_run_records(
    pseudo_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a DDP process of rank 1 (as Lightning's launcher starts it) trains but leaves the records to rank 0
    monkeypatch.setenv("RANK", "1")
    run = tmp_path / "rank1"
    assert main(["pretrain", str(pseudo_dataset), "--out", str(run), *TINY, "--max-steps", "1"]) == 0
    assert not (run / "dataset.json").exists() and not (run / "config.yaml").exists()
    monkeypatch.delenv("RANK")
    run0 = tmp_path / "rank0"
    assert main(["pretrain", str(pseudo_dataset), "--out", str(run0), *TINY, "--max-steps", "1"]) == 0
    assert (run0 / "dataset.json").is_file() and (run0 / "config.yaml").is_file()
