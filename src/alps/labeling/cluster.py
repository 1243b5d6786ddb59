"""Streaming k-means over all mask features of a dataset, with memory bounded by the batch size.

:func:`fit_clusters` makes ``passes + 2`` streaming reads of the mask tables:

1. reservoir-sample ``reservoir_size`` features uniformly (and count the masks);
2. k-means++ on the reservoir gives the initial centres;
3. ``passes`` epochs of :class:`sklearn.cluster.MiniBatchKMeans.partial_fit`; each epoch visits the
   tables in a fresh random order and shuffles rows inside chunks of several batches, because the
   masks of one image are strongly correlated and would otherwise pull the centres in turn;
4. one read without updates measures the final inertia.

Determinism: the tables are first sorted by image id (then path), and every random choice comes from
one ``numpy.random.Generator`` seeded with ``seed`` (sklearn gets ``random_state=seed``), so the same
set of tables and the same seed give bit-identical centres whatever order the paths were passed in.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus
from tqdm.auto import tqdm

from alps.labeling.table import (
    atomic_path,
    iter_feature_batches,
    read_mask_table,
    set_clusters,
    table_feature_dim,
    table_features,
    table_image_id,
)

__all__ = ["ClusterModel", "assign_clusters", "fit_clusters", "sorted_tables"]

MODEL_FORMAT_VERSION = 1


@dataclass
class ClusterModel:
    """A fitted set of cluster centres (Euclidean k-means on the mask features).

    Attributes:
        centers: ``(K, C)`` float32 centres, ``K = k_effective``.
        seed: seed the model was fitted with.
        n_seen: feature vectors fed to the online updates (all passes together).
        inertia: sum over all masks of the squared distance to the nearest centre (final centres).
        k: number of clusters asked for; ``k_effective`` is smaller when there were fewer masks.
        n_features: number of masks in the tables the model was fitted on.
        passes, batch_size, reservoir_size: fitting parameters, kept for the manifest.
        warnings: human-readable notes about anything unusual during fitting (e.g. K reduced).
    """

    centers: npt.NDArray[np.float32]
    seed: int
    n_seen: int
    inertia: float
    k: int = 0
    n_features: int = 0
    passes: int = 0
    batch_size: int = 0
    reservoir_size: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def k_effective(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def nearest(
        self, features: npt.ArrayLike, *, batch_size: int = 65536
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """Nearest centre of each row and the squared distance to it.

        Args:
            features: ``(N, C)`` features.

        Returns:
            ``(N,)`` int32 cluster ids and ``(N,)`` float32 squared distances.
        """
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got shape {x.shape}")
        labels = np.empty(x.shape[0], dtype=np.int32)
        dists = np.empty(x.shape[0], dtype=np.float32)
        if x.shape[0] == 0:
            return labels, dists
        if self.k_effective == 0:
            raise ValueError("cluster model has no centres (it was fitted on zero masks)")
        centers = self.centers.astype(np.float32)
        c_sq = np.einsum("kc,kc->k", centers, centers)
        for start in range(0, x.shape[0], batch_size):
            block = x[start : start + batch_size]
            d = c_sq[None, :] - 2.0 * (block @ centers.T)
            best = np.argmin(d, axis=1)
            labels[start : start + block.shape[0]] = best
            x_sq = np.einsum("nc,nc->n", block, block)
            dists[start : start + block.shape[0]] = np.maximum(d[np.arange(block.shape[0]), best] + x_sq, 0)
        return labels, dists

    def predict(self, features: npt.ArrayLike, *, batch_size: int = 65536) -> npt.NDArray[np.int32]:
        """``(N,)`` int32 id of the nearest centre for ``(N, C)`` features."""
        return self.nearest(features, batch_size=batch_size)[0]

    def metadata(self) -> dict[str, Any]:
        """Everything but the centres, JSON-serialisable (for manifests)."""
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "seed": self.seed,
            "n_seen": self.n_seen,
            "inertia": self.inertia,
            "k": self.k,
            "k_effective": self.k_effective,
            "dim": self.dim,
            "n_features": self.n_features,
            "passes": self.passes,
            "batch_size": self.batch_size,
            "reservoir_size": self.reservoir_size,
            "warnings": list(self.warnings),
        }

    def save(self, path: Path | str) -> None:
        """Write an ``.npz`` with ``centers`` and a JSON ``metadata`` string (no pickle), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                centers=np.ascontiguousarray(self.centers, dtype=np.float32),
                metadata=np.array(json.dumps(self.metadata())),
            )

    @classmethod
    def load(cls, path: Path | str) -> ClusterModel:
        """Read a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            centers = np.array(data["centers"], dtype=np.float32)
            meta = json.loads(str(data["metadata"]))
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise ValueError(f"{path}: cluster model format {meta.get('format_version')} is not supported")
        return cls(
            centers=centers,
            seed=int(meta["seed"]),
            n_seen=int(meta["n_seen"]),
            inertia=float(meta["inertia"]),
            k=int(meta["k"]),
            n_features=int(meta["n_features"]),
            passes=int(meta["passes"]),
            batch_size=int(meta["batch_size"]),
            reservoir_size=int(meta["reservoir_size"]),
            warnings=[str(w) for w in meta["warnings"]],
        )


def sorted_tables(paths: Sequence[Path | str]) -> list[Path]:
    """Tables in canonical order (image id, then path), so results do not depend on input order."""
    unique = {Path(p) for p in paths}
    return sorted(unique, key=lambda p: (table_image_id(p), str(p)))


def _count_rows(paths: Sequence[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


class _Reservoir:
    """Uniform sample of a stream (Algorithm R, vectorised over batches)."""

    def __init__(self, capacity: int, dim: int, rng: np.random.Generator) -> None:
        self.data = np.zeros((capacity, dim), dtype=np.float32)
        self.filled = 0
        self.seen = 0
        self.rng = rng

    def add(self, batch: npt.NDArray[np.float32]) -> None:
        capacity = self.data.shape[0]
        take = min(capacity - self.filled, batch.shape[0])
        self.data[self.filled : self.filled + take] = batch[:take]
        self.filled += take
        self.seen += take
        rest = batch[take:]
        if rest.shape[0] == 0:
            return
        # item number t (0-based) replaces slot j ~ U{0..t} when j < capacity
        t = self.seen + np.arange(rest.shape[0])
        slots = self.rng.integers(0, t + 1)
        keep = np.flatnonzero(slots < capacity)
        # when a slot is hit twice in one batch the later item wins, as in the sequential algorithm
        _, last_first = np.unique(slots[keep][::-1], return_index=True)
        chosen = keep[keep.size - 1 - last_first]
        self.data[slots[chosen]] = rest[chosen]
        self.seen += rest.shape[0]

    def sample(self) -> npt.NDArray[np.float32]:
        return self.data[: self.filled]


def _shuffled_batches(
    paths: Sequence[Path], batch_size: int, chunk_rows: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.float32]]:
    """One epoch: tables in random order, rows shuffled within chunks of ``chunk_rows``."""
    order = rng.permutation(len(paths))
    for chunk in iter_feature_batches([paths[i] for i in order], chunk_rows):
        perm = rng.permutation(chunk.shape[0])
        for start in range(0, chunk.shape[0], batch_size):
            yield chunk[perm[start : start + batch_size]]


def fit_clusters(
    paths: Sequence[Path],
    k: int = 46,
    *,
    seed: int = 0,
    batch_size: int = 4096,
    passes: int = 3,
    reservoir_size: int = 20000,
    progress: bool = True,
    shuffle_chunk_batches: int = 8,
) -> ClusterModel:
    """Fit ``k`` cluster centres to the features of all mask tables with bounded memory.

    Args:
        paths: mask tables (:mod:`alps.labeling.table`); order does not matter (see module docstring).
        k: number of clusters (46 in ALPS).
        seed: seed for every random choice.
        batch_size: rows per mini-batch update (raised to ``k`` if smaller).
        passes: epochs of mini-batch updates over the data.
        reservoir_size: features sampled for the k-means++ initialisation (raised to ``k`` if smaller).
        progress: show tqdm progress bars.
        shuffle_chunk_batches: rows are shuffled within chunks of this many batches.

    Returns:
        The model. With fewer masks than ``k`` in total, ``k_effective`` is the number of masks (each
        mask its own cluster) and the reduction is recorded in ``warnings`` and issued as a
        ``RuntimeWarning``; with no masks at all the model has zero centres.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    tables = sorted_tables(paths)
    if not tables:
        raise ValueError("fit_clusters needs at least one mask table")
    dim = table_feature_dim(tables[0])
    notes: list[str] = []
    rng = np.random.default_rng(seed)

    n_total = _count_rows(tables)
    reservoir = _Reservoir(max(reservoir_size, min(k, n_total)), dim, rng)
    with tqdm(total=n_total, desc="sampling features", unit="mask", disable=not progress) as bar:
        for batch in iter_feature_batches(tables, batch_size):
            reservoir.add(batch)
            bar.update(batch.shape[0])

    def model(centers: npt.NDArray[np.float32], n_seen: int, inertia: float) -> ClusterModel:
        return ClusterModel(
            centers=centers,
            seed=seed,
            n_seen=n_seen,
            inertia=inertia,
            k=k,
            n_features=n_total,
            passes=passes,
            batch_size=batch_size,
            reservoir_size=reservoir_size,
            warnings=notes,
        )

    k_eff = min(k, n_total)
    if k_eff < k:
        notes.append(f"only {n_total} masks in total: k reduced from {k} to {k_eff}")
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    if k_eff == 0:
        return model(np.zeros((0, dim), dtype=np.float32), 0, 0.0)

    init, _ = kmeans_plusplus(reservoir.sample(), n_clusters=k_eff, random_state=seed)
    step = max(batch_size, k_eff)  # the first partial_fit call needs at least k rows
    kmeans = MiniBatchKMeans(
        n_clusters=k_eff,
        init=init,
        n_init=1,
        batch_size=step,
        random_state=seed,
        compute_labels=False,
    )
    n_seen = 0
    with tqdm(total=n_total * passes, desc="k-means", unit="mask", disable=not progress) as bar:
        for _ in range(passes):
            for batch in _shuffled_batches(tables, step, step * shuffle_chunk_batches, rng):
                kmeans.partial_fit(batch)
                n_seen += batch.shape[0]
                bar.update(batch.shape[0])
    centers = (
        np.ascontiguousarray(kmeans.cluster_centers_, dtype=np.float32)
        if n_seen
        else np.ascontiguousarray(init, dtype=np.float32)
    )
    fitted = model(centers, n_seen, 0.0)

    inertia = 0.0
    for batch in iter_feature_batches(tables, max(batch_size, 1)):
        inertia += float(fitted.nearest(batch)[1].astype(np.float64).sum())
    fitted.inertia = inertia
    if not math.isfinite(inertia):
        notes.append("inertia is not finite: features contain NaN or inf")
    return fitted


def assign_clusters(
    paths: Sequence[Path],
    model: ClusterModel,
    *,
    batch_size: int = 65536,
    write: bool = True,
) -> dict[str, npt.NDArray[np.int32]]:
    """Give every mask its nearest cluster; optionally store it in the tables.

    Args:
        paths: mask tables.
        model: fitted centres.
        batch_size: rows scored at once (memory bound of the distance matrix).
        write: rewrite each table's ``cluster`` column (atomically, via
            :func:`alps.labeling.table.set_clusters`).

    Returns:
        ``{image_id: (N,) int32 cluster per mask in mask_index order}``, one entry per table
        (empty arrays for tables without masks).
    """
    result: dict[str, npt.NDArray[np.int32]] = {}
    for path in sorted_tables(paths):
        table = read_mask_table(path)
        image_id = table_image_id(table)
        if image_id in result:
            raise ValueError(f"image id {image_id!r} appears in more than one table ({path})")
        clusters = model.predict(table_features(table), batch_size=batch_size)
        if write:
            set_clusters(path, clusters)
        result[image_id] = clusters
    return result
