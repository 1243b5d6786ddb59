"""Fixtures of the engine tests: one in-process Ray instance per test session (2 CPUs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A real local Ray instance with 2 CPUs, started once; shut down at the end of the session."""
    ray = pytest.importorskip("ray") if not _ci() else __import__("ray")  # CI installs it (test extra)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() == "true"
