"""The work-unit protocol every input kind implements: plan → units → paint.

An **item** is one entry of the output dataset: an image, a GeoTIFF scene, a volume slice. It is
cut into **work units** for phase A (masks → gate → features → one mask table per unit): an image
or a slice is one unit, a scene one unit per tile. After clustering, the item **paints** its
outputs (label map or raster, overlay, vectors) from its units' tables. Kinds that span several
items (volumes: all slices of one volume) **finish** after painting (re-assembling the volume).

Each kind lives in its own module (:mod:`.image`, :mod:`.scene`, :mod:`.volume`); the orchestrator
(:mod:`alps.labeling.run`) and the engines (:mod:`alps.engines`) only see these protocols, so a new
input kind is one new module, and an engine can run units anywhere a unit can be pickled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from alps.core.images import ImageFile
from alps.sam.types import MaskResult

Records = list[dict[str, Any]]
MaskSource = Callable[[np.ndarray], MaskResult]


@dataclass
class UnitPixels:
    """What a work unit shows the mask source."""

    rgb: npt.NDArray[np.uint8]  # (H, W, 3)
    valid: npt.NDArray[np.bool_] | None = None  # (H, W) pixels that may be labelled; None = all
    source_mode: str = "RGB"
    notes: list[str] = field(default_factory=list)  # conversions applied, e.g. "alpha dropped"


@dataclass
class UnitResult:
    """Phase A's answer for one unit (small: it travels back from a worker to the driver)."""

    unit_id: str
    item_id: str
    status: str = "ok"  # "ok", "empty" (no valid pixel: marker written, no table) or "failed"
    error: str | None = None
    height: int = 0
    width: int = 0
    source_mode: str = ""
    conversion: list[str] = field(default_factory=list)
    n_masks: int = 0
    n_masks_kept: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class WorkUnit(Protocol):
    """The smallest piece of phase A: one image, one scene tile, one volume slice (picklable)."""

    @property
    def id(self) -> str:
        """Image id written into the unit's mask table (a tile: ``<scene id>/<tile key>``)."""
        ...

    @property
    def item_id(self) -> str: ...

    @property
    def table(self) -> str:
        """Path of the unit's mask table relative to the output directory."""
        ...

    def read(self) -> UnitPixels:
        """The unit's pixels; raises :class:`alps.core.images.ImageReadError` when unreadable."""
        ...

    def restrict(self, records: Records, pixels: UnitPixels) -> Records:
        """Masks as this unit may keep them before the area gate (a tile: clipped to valid pixels)."""
        ...

    def own(self, records: Records) -> Records:
        """Masks this unit owns after the gate (a tile: those whose centre lies in its core)."""
        ...


@dataclass
class Painted:
    """Phase C's answer for one item: files written (relative to the output directory) and counts."""

    image: str
    label: str
    overlay: str
    table: str
    counts: npt.NDArray[np.int64]  # labelled pixels per cluster
    files: list[Path] = field(default_factory=list)  # every file written (absolute), kept by cleanup
    vector: str | None = None


@dataclass(frozen=True)
class PaintContext:
    """What painting needs from clustering (picklable: a Ray task receives it)."""

    out: Path
    assignments: dict[str, npt.NDArray[np.int32]]  # table image id -> cluster per mask
    k: int  # clusters used
    colours: npt.NDArray[np.uint8]  # (k, 3) overlay palette
    model: Any  # alps.labeling.cluster.ClusterModel (scenes join cut masks by it); None without masks
    vector_format: str = "gpkg"


class Item(Protocol):
    """One entry of the dataset: an image, a scene, a volume slice."""

    @property
    def file(self) -> ImageFile:
        """Id, path and relative path of the entry."""
        ...

    @property
    def group(self) -> str:
        """Split group: the item itself, or its volume (all slices of a volume land in one split)."""
        ...

    @property
    def unit_name(self) -> str:
        """What its units are called in messages ("image", "tile", "slice")."""
        ...

    def settings(self) -> dict[str, Any]:
        """What its tables depend on besides the run parameters (a scene: its tiling)."""
        ...

    def units(self) -> Sequence[WorkUnit]:
        """All of its work units, in a fixed order."""
        ...

    def unit_done(self, out: Path, unit: WorkUnit) -> bool:
        """The unit's table (or its empty marker) exists."""
        ...

    def discard(self, out: Path) -> None:
        """Remove its tables (its settings changed since they were made)."""
        ...

    def tables(self, out: Path) -> list[Path]:
        """Its mask tables, for clustering and painting."""
        ...

    def describe(self, results: Sequence[UnitResult], out: Path) -> dict[str, Any]:
        """Fields of its :class:`alps.labeling.dataset.ImageRecord` from its units' results."""
        ...

    def paint(self, ctx: PaintContext, split: str) -> Painted:
        """Label map, overlay (and vectors) from its tables; raises ImageReadError if the input vanished."""
        ...


class Finisher(Protocol):
    """Work after painting that spans items (volumes: stack the slices' labels back into a volume)."""

    def finish(self, out: Path, labels: dict[str, Path]) -> set[Path]:
        """Write the joint outputs from the items' label files (id -> path); return the files written."""
        ...

    def manifest(self) -> dict[str, Any]:
        """Its section of ``manifest.json`` (empty when it has nothing to say)."""
        ...

    def notes(self) -> list[str]:
        """Warnings for the run summary."""
        ...
