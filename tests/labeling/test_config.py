"""``LabelConfig``: one dataclass behind the flags, ``--config`` YAML, ``--print-config`` and the API."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import alps
from alps.cli import main as cli_main
from alps.core.config import read_config_file
from alps.labeling.config import LabelConfig, split_overrides, table_fields
from tests.labeling.test_run import write_images

FLAGS = [
    "--model", "litemedsam", "--checkpoint", "random", "--masks", "slic", "--points-per-side", "4",
    "--clusters", "3", "--seed", "5", "--val-fraction", "0.5", "--generator", "compactness=20",
    "--no-progress",
]  # fmt: skip


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["label", *FLAGS, "--print-config"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert (
        values["clusters"] == 3 and values["generator"] == {"compactness": 20} and values["progress"] is False
    )
    assert list(values) == [f.name for f in dataclasses.fields(LabelConfig)]  # every option, in order
    (tmp_path / "run.yaml").write_text(printed)
    assert cli_main(["label", "--config", str(tmp_path / "run.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    # flags override the file's values; KEY=VALUE flags extend the file's generator mapping
    args = ["label", "--config", str(tmp_path / "run.yaml"), "--clusters", "7", "--generator", "sigma=1"]
    assert cli_main([*args, "--print-config"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    assert again["clusters"] == 7 and again["generator"] == {"compactness": 20, "sigma": 1}
    assert LabelConfig(**read_config_file(tmp_path / "run.yaml")) == LabelConfig(**values)


def test_config_file_gives_the_same_outputs_as_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = write_images(tmp_path / "in", 3)
    assert cli_main(["label", str(tmp_path / "in"), "--out", str(tmp_path / "flags"), *FLAGS]) == 0
    assert cli_main(["label", *FLAGS, "--print-config"]) == 0
    (tmp_path / "run.yaml").write_text(capsys.readouterr().out)
    code = cli_main(
        [
            "label",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "file"),
            "--config",
            str(tmp_path / "run.yaml"),
        ]
    )
    assert code == 0
    config = LabelConfig(**read_config_file(tmp_path / "run.yaml"))
    alps.label(inputs, tmp_path / "api", config)
    labels = {}
    for name in ("flags", "file", "api"):
        out = tmp_path / name
        labels[name] = {p.name: p.read_bytes() for p in sorted((out / "labels").rglob("*.png"))}
        params = json.loads((out / "params.json").read_text())
        assert params["generator"] == {"compactness": 20} and params["masks"] == "slic"
    assert len(labels["flags"]) == 3 and labels["flags"] == labels["file"] == labels["api"]


def test_bad_config_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("clusters: 4\ncolour: red\n")
    assert cli_main(["label", "x", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key(s) colour" in err and "\n" not in err
    (tmp_path / "bad.yaml").write_text("area_threshold: 1.5\n")
    assert cli_main(["label", "x", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "area_threshold must be in (0, 1]" in capsys.readouterr().err


def test_overrides_split_into_fields_and_generator_settings() -> None:
    fields, generator = split_overrides({"clusters": 4, "pred_iou_thresh": 0.5, "crop_n_layers": 1})
    assert fields == {"clusters": 4} and generator == {"pred_iou_thresh": 0.5, "crop_n_layers": 1}
    # the fields the tables depend on are exactly those that change what SAM produces
    assert {"model", "checkpoint", "points_per_side", "generator", "area_threshold"} <= set(table_fields())
    assert not {"clusters", "seed", "val_fraction", "vector_format", "progress"} & set(table_fields())


def test_clusters_auto_from_flags_yaml_and_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["label", "--clusters", "auto", "--cluster-candidates", "32 8,16", "--print-config"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["clusters"] == "auto" and values["cluster_candidates"] == [8, 16, 32]
    (tmp_path / "run.yaml").write_text(printed)
    assert cli_main(["label", "--config", str(tmp_path / "run.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    api = LabelConfig(clusters="auto", cluster_candidates=(16, 8, 32, 8))
    assert LabelConfig(**read_config_file(tmp_path / "run.yaml")) == api
    (tmp_path / "hand.yaml").write_text("clusters: auto\ncluster_candidates: 8, 16, 32\n")
    assert LabelConfig(**read_config_file(tmp_path / "hand.yaml")) == api
    assert LabelConfig(clusters="12").clusters == 12 and LabelConfig().cluster_candidates[0] == 8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--clusters", "foo"], "clusters must be a whole number >= 1 or 'auto', got 'foo'"),
        (["--clusters", "0"], "clusters must be a whole number >= 1 or 'auto', got '0'"),
        (["--clusters", "2.5"], "clusters must be a whole number >= 1 or 'auto'"),
        (["--clusters", "auto", "--cluster-candidates", "1,8"], "cluster_candidates must be whole numbers"),
        (["--cluster-candidates", "8,x"], "cluster_candidates must be whole numbers >= 2"),
    ],
)
def test_bad_cluster_values_are_one_line_errors(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["label", "x", "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alps label: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before any work
