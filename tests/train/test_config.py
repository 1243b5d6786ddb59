"""Config: YAML round trip, precedence of defaults < YAML < flags, every field a flag."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from alps.cli.train import add_config_flags, config_from_args
from alps.train.config import TrainConfig, merge, parse_devices, read_yaml, save_yaml


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return parser.parse_args(argv)


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = TrainConfig(data="d", out="o", arch="fpn", crop_size=64, vflip=True, devices="0,1")
    save_yaml(config, tmp_path / "c.yaml")
    assert TrainConfig.from_dict(read_yaml(tmp_path / "c.yaml")) == config


def test_unknown_keys_and_bad_values_fail() -> None:
    with pytest.raises(ValueError, match=r"unknown config key\(s\) colour; known: data, out"):
        TrainConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(crop_size=100)


def test_precedence_defaults_yaml_flags(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data: from_yaml\nlr: 0.5\nbatch-size: 3\nhflip: false\n")
    args = _parse(["DATA", "--config", str(tmp_path / "c.yaml"), "--lr", "0.1", "--devices", "2"])
    config = config_from_args(args, "finetune")
    assert config.data == "DATA" and config.lr == 0.1  # flags win
    assert config.batch_size == 3 and config.hflip is False  # from YAML
    assert config.max_steps == TrainConfig.max_steps  # default
    assert config.mode == "finetune" and parse_devices(config.devices) == 2


def test_every_field_is_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    dests = {a.dest for a in parser._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"mode"}
    assert fields <= dests


def test_resume_reads_the_saved_run_config(tmp_path: Path) -> None:
    save_yaml(TrainConfig(data="d", out=str(tmp_path), crop_size=64, max_steps=4), tmp_path / "config.yaml")
    config = config_from_args(_parse(["--out", str(tmp_path), "--resume", "--max-steps", "8"]), "pretrain")
    assert (config.data, config.crop_size, config.max_steps, config.resume) == ("d", 64, 8, "last")


def test_merge_and_devices() -> None:
    assert merge({"lr": 1.0}, {"lr": 2.0}).lr == 2.0
    assert parse_devices("auto") == "auto" and parse_devices("0,1") == [0, 1]
