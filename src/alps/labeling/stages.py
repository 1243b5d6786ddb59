"""The stages of ``alps label`` as plain functions over artifacts; engines decide where they run.

Phase A, per work unit (:func:`process_unit`): pixels → **masks** (+ the SAM embedding, one encoder
pass) → **gate** (:func:`alps.labeling.features.filter_masks`) → **features** pooled from that
embedding (:func:`alps.labeling.features.pool_mask_features`) → one **mask table** (Parquet,
atomic; :func:`alps.labeling.table.write_mask_table`).

Phase B, over all tables (:func:`cluster_tables`): K chosen when ``clusters="auto"``
(:func:`choose_clusters`), streaming mini-batch k-means (:func:`alps.labeling.cluster.fit_kmeans`),
the model saved, every mask assigned.

Phase C, per item: painting (:meth:`alps.labeling.inputs.base.Item.paint`). Every argument of these
functions is picklable, so the Ray engine ships the same functions to its workers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from alps.core.images import ImageReadError
from alps.core.timing import StageTimer
from alps.labeling.config import DEFAULT_CANDIDATES
from alps.labeling.inputs.base import MaskSource, UnitResult, WorkUnit
from alps.labeling.sources import ResolvedModel, build_source

if TYPE_CHECKING:  # the clustering module (scikit-learn) is imported where phase B runs
    from alps.labeling.cluster import FeatureSource

log = logging.getLogger("alps.labeling")

ESTIMATE_WARN_SECONDS = 600.0  # estimates above this are logged as warnings (shown by the CLI)


@dataclass(frozen=True)
class MaskJob:
    """Everything phase A needs besides the unit (picklable: a worker builds its source from it)."""

    out: Path
    model: ResolvedModel
    masks: str
    points_per_side: int
    prompt: str | None
    mode: str
    generator: dict[str, Any]
    device: str
    seed: int
    area_threshold: float
    min_area: int
    features: str = "sam+stats"  # feature source (alps.labeling.features.FEATURE_SOURCES)
    # phase B's keywords of cluster_tables: refine_passes, restarts, candidates (for k="auto")
    cluster_options: tuple[tuple[str, Any], ...] = ()

    def source(self, device: str | None = None) -> MaskSource:
        """Load the model and build the mask source (once per process or actor)."""
        return build_source(
            self.model, self.masks, self.points_per_side, self.prompt, self.mode, self.generator,
            device or self.device, self.seed,
        )  # fmt: skip


def process_unit(unit: WorkUnit, source: MaskSource, job: MaskJob) -> UnitResult:
    """Phase A for one unit: masks, gate, features, mask table; never raises for a bad input."""
    from alps.labeling.features import filter_masks, mask_features
    from alps.labeling.table import write_mask_table

    result = UnitResult(unit.id, unit.item_id)
    timer = StageTimer()
    try:
        with timer("read"):
            pixels = unit.read()
    except ImageReadError as err:
        result.status, result.error = "failed", str(err)
        return result
    height, width = pixels.rgb.shape[:2]
    result.height, result.width = height, width
    result.source_mode, result.conversion = pixels.source_mode, list(pixels.notes)
    table = job.out / unit.table
    if pixels.valid is not None and not pixels.valid.any():  # nothing to label: a marker, no table
        table.parent.mkdir(parents=True, exist_ok=True)
        table.with_suffix(".empty").touch()
        result.status = "empty"
        return result
    with timer("masks"):
        generated = source(pixels.rgb)
    with timer("gate"):
        records = unit.restrict(generated.masks, pixels)
        kept = filter_masks(
            records, height * width, max_area_fraction=job.area_threshold, min_area=job.min_area
        )
        kept = unit.own(kept)
    with timer("features"):
        features = mask_features(
            job.features, pixels.rgb, generated.embedding, generated.geometry, kept, device=job.device
        )
    with timer("table"):
        write_mask_table(table, unit.id, kept, features, (height, width))
    result.n_masks, result.n_masks_kept = len(generated.masks), len(kept)
    result.seconds = timer.rounded()
    return result


def report_estimate(item_id: str, unit_name: str, n_units: int, first: float, progress: bool) -> None:
    """After the first unit of a many-unit item: how long the item will take (warning above 10 min)."""
    from tqdm.auto import tqdm

    total = first * n_units
    message = (
        f"{item_id}: {n_units} {unit_name}s to do, first {unit_name} took {first:.1f} s: about "
        f"{total / 60:.1f} min for the {'scene' if unit_name == 'tile' else 'item'} "
        f"(resumable per {unit_name})"
    )
    if total > ESTIMATE_WARN_SECONDS:
        log.warning(message)
        return
    log.info(message)
    if progress:
        tqdm.write(message)


@dataclass
class Clustering:
    """Phase B's artifact: the model (None without any mask) and the cluster of every mask."""

    model: Any  # alps.labeling.cluster.ClusterModel | None
    assignments: dict[str, npt.NDArray[np.int32]]  # table image id -> cluster per row
    notes: list[str]
    choice: dict[str, Any] | None = None  # clusters="auto": KChoice.as_dict() (the manifest's cluster_choice)

    @property
    def k(self) -> int:
        return int(self.model.k_effective) if self.model is not None else 0

    def sizes(self) -> npt.NDArray[np.int64]:
        """Masks per cluster."""
        sizes = np.zeros(self.k, dtype=np.int64)
        for values in self.assignments.values():
            sizes += np.bincount(values, minlength=self.k)[: self.k]
        return sizes


def cluster_tables(
    tables: Sequence[Path],
    k: int | str,
    seed: int,
    out: Path,
    *,
    progress: bool,
    refine_passes: int = 0,
    restarts: int = 1,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
) -> Clustering:
    """Phase B: fit streaming k-means over ``tables`` (mini-batch, then ``refine_passes`` Lloyd passes,
    best of ``restarts``), save ``out/cluster_model.npz``, assign every mask.

    ``k="auto"``: K is first chosen among ``candidates`` by :func:`choose_clusters` on the same
    feature stream, then fitted exactly as an explicit K (same seed, so the same K and labels).
    """
    from alps.labeling.cluster import TableFeatures, assign_clusters, fit_kmeans

    if not tables:
        return Clustering(None, {}, [])
    source = TableFeatures.of(tables)
    choice: dict[str, Any] | None = None
    notes: list[str] = []
    if k == "auto":
        k, choice, notes = choose_clusters(source, candidates, seed)
    if not isinstance(k, int):
        raise ValueError(f"k must be a whole number >= 1 or 'auto', got {k!r}")
    with warnings.catch_warnings():  # fit_kmeans' notes are reported in the summary instead
        warnings.simplefilter("ignore", RuntimeWarning)
        model = fit_kmeans(
            source, k, seed=seed, progress=progress, refine_passes=refine_passes, restarts=restarts
        )
    model.save(out / "cluster_model.npz")
    assignments = assign_clusters(list(tables), model)
    return Clustering(model, assignments, notes + list(model.warnings), choice)


def choose_clusters(
    source: FeatureSource, candidates: Sequence[int], seed: int
) -> tuple[int, dict[str, Any] | None, list[str]]:
    """K for ``clusters="auto"``: :func:`alps.labeling.cluster.choose_k` over ``candidates``.

    Costs one streaming read (a uniform sample of 5000 features) and one full-batch k-means plus a
    silhouette per candidate. The table (K, inertia, silhouette) is logged at INFO.

    Returns:
        The chosen K, ``KChoice.as_dict()`` (None when there are too few masks to choose: then the
        smallest candidate, which the fit reduces to the number of masks) and notes for the summary
        (also when the largest candidate wins: the range may be too small).
    """
    from alps.labeling.cluster import choose_k

    n_masks = source.count()
    if n_masks <= min(candidates):
        note = f"clusters auto: only {n_masks} masks, too few to choose; K = {min(candidates)}"
        log.warning(note)
        return min(candidates), None, [note]
    choice = choose_k(source, candidates, seed=seed)
    table = choice.as_dict()
    log.info("clusters auto: %s, sample of %d masks", choice.rule, choice.sample_size)
    for row in table["candidates"]:
        mark = "  <- chosen" if row["k"] == choice.k else ""
        log.info("  K %4d  inertia %14.2f  silhouette %.4f%s", row["k"], row["inertia"], row["silhouette"],
                 mark)  # fmt: skip
    notes = []
    if len(choice.candidates) > 1 and choice.k == choice.candidates[-1]:
        notes.append(f"clusters auto: K = {choice.k} is the largest candidate tried and the silhouette may "
                     "rise further; consider larger --cluster-candidates")  # fmt: skip
        log.info(notes[-1])
    return choice.k, table, notes
