"""Fixtures for the training tests: tiny datasets made from real deepforest images (see fake_data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alps.samples.neon import TreeImage

from .fake_data import make_colour_pseudo_dataset, make_tree_dataset


@pytest.fixture(scope="session")
def deepforest_samples() -> dict[str, TreeImage]:
    from alps.samples.neon import tree_images
    from tests.conftest import require_asset

    found = require_asset(
        "the deepforest sample images", lambda: tree_images(["OSBS_029", "SOAP_061", "SOAP_031"])
    )
    return {s.id: s for s in found}


@pytest.fixture(scope="session")
def tree_dataset(deepforest_samples: dict[str, TreeImage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mmseg layout, 2 classes (not_tree, tree), 4 train + 4 val tiles of 96 px."""
    return make_tree_dataset(deepforest_samples, tmp_path_factory.mktemp("trees"))


@pytest.fixture(scope="session")
def pseudo_dataset(
    deepforest_samples: dict[str, TreeImage], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """alps label layout, K=4 colour clusters + 255, 8 train + 4 val tiles of 96 px."""
    return make_colour_pseudo_dataset(deepforest_samples, tmp_path_factory.mktemp("pseudo"))
