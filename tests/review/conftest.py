"""Fixtures of the review tests: one real labelled run on the NEON tiles, shared by every test module.

Real-data assets (the NEON tiles from the deepforest wheel, the LiteMedSAM weights) are fetched into the
alps cache. When they cannot be fetched the tests skip locally but FAIL under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

TILES = ("OSBS_029.png", "SOAP_061.png")  # the two 400 px tiles with tree boxes
CLUSTERS = 8


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally, fail on CI (a real-data test must not pass silently there)."""
    if on_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def neon_assets() -> dict[str, Any]:
    """Two 400 px NEON tiles, their tree boxes and the LiteMedSAM checkpoint."""
    from alps.core.fetch import FetchError
    from alps.sam.weights import ChecksumError, fetch_weights
    from alps.samples import sample_images, sample_tree_boxes

    try:
        return {
            "images": sample_images(names=TILES),
            "boxes": sample_tree_boxes(),
            "checkpoint": fetch_weights("litemedsam"),
        }
    except ChecksumError:
        raise
    except FetchError as err:
        missing(f"the NEON tiles / LiteMedSAM weights cannot be fetched: {err}")
        raise


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory: pytest.TempPathFactory, neon_assets: dict[str, Any]) -> Path:
    """A real `alps label` run (LiteMedSAM, box prompts, 8 x 8 grid, K = 8) on two tiles.

    Read-only for the tests: each test that writes into a run copies it with :func:`copy_run`.
    """
    import alps

    out = tmp_path_factory.mktemp("neon") / "run"
    alps.label(
        [str(p) for p in neon_assets["images"]],
        out,
        model="litemedsam",
        checkpoint=str(neon_assets["checkpoint"]),
        clusters=CLUSTERS,
        points_per_side=8,
        progress=False,
    )
    return out


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a labelled run (hard links would share inodes: copy the bytes)."""
    shutil.copytree(run, dest)
    return dest


def artifacts_dir() -> Path | None:
    """``$ALPS_TEST_ARTIFACTS`` (created) when set."""
    value = os.environ.get("ALPS_TEST_ARTIFACTS")
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path
