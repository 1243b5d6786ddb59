"""alps.core.fetch: pinned downloads through pip; every failure is one line with a manual alternative."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alps.core.fetch import FetchError, pip_download


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip configured with one unreachable index and nothing else (no config files, no find-links)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("sdist", [False, True])
def test_offline_is_one_line_with_the_manual_alternative(tmp_path: Path, sdist: bool) -> None:
    with pytest.raises(FetchError) as info:
        pip_download("pyradiomics-bhklab==3.1.4", tmp_path, sdist=sdist)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download pyradiomics-bhklab==3.1.4 with pip")
    assert "manual alternative" in message and str(tmp_path) in message
    assert ("source archive" in message) == sdist
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


def test_changed_pip_internals_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake_pip" / "pip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "99.0"\n')  # a pip without pip._internal.commands
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(FetchError, match=r"this pip \(pip 99\.0\) no longer has the internal API") as info:
        pip_download("pyradiomics-bhklab==3.1.4", tmp_path / "dl", sdist=True)
    assert "\n" not in str(info.value) and "manual alternative" in str(info.value)


def test_unpinned_requirement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pin the version"):
        pip_download("deepforest", tmp_path)


def test_archive_already_there_is_reused_without_pip(tmp_path: Path, offline: None) -> None:
    archive = tmp_path / "pyradiomics_bhklab-3.1.4.tar.gz"
    archive.write_bytes(b"placeholder")
    assert pip_download("pyradiomics-bhklab==3.1.4", tmp_path, sdist=True) == archive
