"""Engines: where the stage functions of ``alps label`` run. They never change what is computed.

An engine runs phase A over work units, phase B over the mask tables and phase C over items
(:mod:`alps.labeling.stages`); the artifacts between them are files in the output directory, so
engines are interchangeable and a run started with one can be resumed with another.

- ``local`` (:class:`alps.engines.local.LocalEngine`): this process, one unit after another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from alps.labeling.inputs.base import Item, PaintContext, Painted, UnitResult, WorkUnit
from alps.labeling.stages import Clustering, MaskJob

__all__ = ["ENGINES", "Engine", "get_engine"]


class Engine(Protocol):
    """Runs the three phases of a labelling run."""

    name: str

    def process(self, units: Sequence[WorkUnit], job: MaskJob, *, progress: bool) -> Iterator[UnitResult]:
        """Phase A: one result per unit (any order); bad inputs come back as failed results."""
        ...

    def cluster(
        self, tables: Sequence[Any], k: int | str, seed: int, job: MaskJob, *, progress: bool
    ) -> Clustering:
        """Phase B: the cluster model over all tables, and every mask's cluster."""
        ...

    def paint(
        self, jobs: Sequence[tuple[Item, str]], ctx: PaintContext, *, progress: bool
    ) -> Iterator[tuple[str, Painted | str]]:
        """Phase C: ``(item id, Painted)``, or ``(item id, error message)`` for an item that failed."""
        ...

    def describe(self) -> dict[str, Any]:
        """Its entry in ``manifest.json`` (name, workers, address without credentials)."""
        ...


ENGINES = ("local", "ray")


def get_engine(engine: str | Engine, **options: Any) -> Engine:
    """An engine by name (``local``, ``ray``) with its options, or the given engine object."""
    if not isinstance(engine, str):
        return engine
    if engine == "local":
        from alps.engines.local import LocalEngine

        return LocalEngine()
    if engine == "ray":
        from alps.engines.ray import RayEngine  # type: ignore[import-not-found, unused-ignore]

        return RayEngine(**options)  # type: ignore[no-any-return, unused-ignore]
    raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
