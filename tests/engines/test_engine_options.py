"""Engine choice and options, without starting Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alps.cli import main as cli_main
from alps.engines import get_engine
from tests.labeling.test_run import write_images


def test_ray_flags_are_refused_with_the_local_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "in", 1)
    code = cli_main(["label", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "2"])
    assert code == 2
    assert "--workers only apply with --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        get_engine("spark")


def test_ray_engine_options_are_checked() -> None:
    if os.environ.get("CI", "").lower() != "true":
        pytest.importorskip("ray")
    from alps.engines.ray import RayEngine, public_address

    with pytest.raises(ValueError, match="workers must be at least 1"):
        RayEngine(workers=0)
    with pytest.raises(ValueError, match="cpus_per_worker"):
        RayEngine(cpus_per_worker=0)
    engine = get_engine("ray", workers=3, batch_size=2)
    assert isinstance(engine, RayEngine) and engine.workers == 3 and engine.batch_size == 2
    assert public_address("ray://alice:secret@head.example:10001") == "ray://head.example:10001"
    assert public_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert public_address(None) is None
