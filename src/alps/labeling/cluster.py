"""Streaming k-means over all mask features of a dataset, with memory bounded by the batch size.

:func:`fit_clusters` (mask tables) and :func:`fit_kmeans` (any :class:`FeatureSource`) make
``passes + refine_passes + 2`` streaming reads of the features:

1. reservoir-sample ``reservoir_size`` features uniformly (and count the masks);
2. k-means++ on the reservoir gives the initial centres, once per restart (``restarts``);
3. ``passes`` epochs of :class:`sklearn.cluster.MiniBatchKMeans.partial_fit`, every restart fed the same
   batches; each epoch visits the tables in a fresh random order and shuffles rows inside chunks of
   several batches, because the masks of one image are strongly correlated and would otherwise pull
   the centres in turn;
4. ``refine_passes`` full Lloyd iterations: each reads every feature once, in the source's fixed order,
   and keeps only the ``K`` per-cluster sums and counts of each restart (float64), then moves every
   centre to the mean of its masks (a cluster that lost all its masks keeps its centre);
5. one read without updates measures the final inertia of each restart; the lowest one is kept.

Mini-batch k-means stops far from a local optimum of the k-means objective on mask features; the
Lloyd passes finish the descent at the same memory bound, and restarts guard against a poor
initialisation. ``refine_passes=0, restarts=1`` is the original (mini-batch only) fit, bit for bit.

Determinism: the tables are first sorted by image id (then path), and every random choice comes from
one ``numpy.random.Generator`` seeded with ``seed`` (sklearn gets ``random_state=seed`` for the first
restart and seeds derived from ``(seed, r)`` for the others), so the same set of tables and the same
seed give bit-identical centres whatever order the paths were passed in. Another engine (e.g. Ray)
gets the same centres by implementing :class:`FeatureSource` with the same batch order: the fitting
functions only see batches.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus
from sklearn.metrics import silhouette_score
from tqdm.auto import tqdm

from alps.labeling.table import (
    atomic_path,
    iter_feature_batches,
    read_mask_table,
    rebatch,
    set_clusters,
    table_feature_dim,
    table_features,
    table_image_id,
)

__all__ = [
    "ArrayFeatures",
    "ClusterModel",
    "FeatureSource",
    "KChoice",
    "TableFeatures",
    "assign_clusters",
    "choose_k",
    "fit_clusters",
    "fit_kmeans",
    "lloyd_passes",
    "sorted_tables",
]

MODEL_FORMAT_VERSION = 1
# a mini-batch epoch shuffles rows within chunks of this many batches (tables, arrays, the fit)
SHUFFLE_CHUNK_BATCHES = 8


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
        passes, batch_size, reservoir_size, refine_passes, restarts: fitting parameters, kept for
            the manifest.
        restart_inertia: final inertia of every restart (the lowest one was kept).
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
    refine_passes: int = 0
    restarts: int = 1
    restart_inertia: list[float] = field(default_factory=list)
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
            "refine_passes": self.refine_passes,
            "restarts": self.restarts,
            "restart_inertia": list(self.restart_inertia),
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
            refine_passes=int(meta.get("refine_passes", 0)),
            restarts=int(meta.get("restarts", 1)),
            restart_inertia=[float(v) for v in meta.get("restart_inertia", [])],
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


class FeatureSource(Protocol):
    """Where the fitting functions read mask features from; an engine implements it to feed them.

    Both methods return a fresh iterator over *every* feature each time they are called.
    """

    @property
    def dim(self) -> int:
        """Feature dimension C."""
        ...

    def count(self) -> int:
        """Number of features (masks) in total."""
        ...

    def batches(self, batch_size: int) -> Iterable[npt.NDArray[np.float32]]:
        """Every feature once as ``(b, C)`` float32 batches of ``batch_size`` rows (the last may be
        shorter), always in the same order."""
        ...

    def shuffled(self, batch_size: int, rng: np.random.Generator) -> Iterable[npt.NDArray[np.float32]]:
        """One mini-batch epoch: every feature once, in an order drawn from ``rng``."""
        ...


def _shuffle_chunks(
    chunks: Iterable[npt.NDArray[np.float32]], batch_size: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.float32]]:
    for chunk in chunks:
        perm = rng.permutation(chunk.shape[0])
        for start in range(0, chunk.shape[0], batch_size):
            yield chunk[perm[start : start + batch_size]]


@dataclass(frozen=True)
class TableFeatures:
    """The ``feature`` column of mask tables, in canonical table order (:func:`sorted_tables`).

    A mini-batch epoch visits the tables in a random order and shuffles rows within chunks of
    ``shuffle_chunk_batches`` batches.
    """

    paths: tuple[Path, ...]
    shuffle_chunk_batches: int = SHUFFLE_CHUNK_BATCHES

    @classmethod
    def of(
        cls, paths: Sequence[Path | str], shuffle_chunk_batches: int = SHUFFLE_CHUNK_BATCHES
    ) -> TableFeatures:
        return cls(tuple(sorted_tables(paths)), shuffle_chunk_batches)

    @property
    def dim(self) -> int:
        return table_feature_dim(self.paths[0])

    def count(self) -> int:
        return _count_rows(self.paths)

    def batches(self, batch_size: int) -> Iterator[npt.NDArray[np.float32]]:
        return iter_feature_batches(list(self.paths), batch_size)

    def shuffled(self, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.float32]]:
        order = rng.permutation(len(self.paths))
        chunks = iter_feature_batches([self.paths[i] for i in order], batch_size * self.shuffle_chunk_batches)
        return _shuffle_chunks(chunks, batch_size, rng)


@dataclass(frozen=True)
class ArrayFeatures:
    """In-memory features, one ``(N_i, C)`` array per image, with the same semantics as
    :class:`TableFeatures` (same parts in the same order give the same fit as the tables)."""

    parts: tuple[npt.NDArray[np.float32], ...]
    shuffle_chunk_batches: int = SHUFFLE_CHUNK_BATCHES

    @property
    def dim(self) -> int:
        return int(self.parts[0].shape[1])

    def count(self) -> int:
        return sum(int(p.shape[0]) for p in self.parts)

    def batches(self, batch_size: int) -> Iterator[npt.NDArray[np.float32]]:
        return rebatch((np.asarray(p, dtype=np.float32) for p in self.parts), batch_size)

    def shuffled(self, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.float32]]:
        order = rng.permutation(len(self.parts))
        chunks = rebatch(
            (np.asarray(self.parts[i], dtype=np.float32) for i in order),
            batch_size * self.shuffle_chunk_batches,
        )
        return _shuffle_chunks(chunks, batch_size, rng)


def _nearest(
    batch: npt.NDArray[np.float32], centers: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Nearest centre of each row and the squared distance (float64), as :meth:`ClusterModel.nearest`."""
    c_sq = np.einsum("kc,kc->k", centers, centers)
    d = c_sq[None, :] - 2.0 * (batch @ centers.T)
    best = np.argmin(d, axis=1)
    x_sq = np.einsum("nc,nc->n", batch, batch)
    dist = np.maximum(d[np.arange(batch.shape[0]), best].astype(np.float64) + x_sq, 0.0)
    return best, dist


def lloyd_passes(
    source: FeatureSource,
    centers: Sequence[npt.NDArray[np.float32]],
    passes: int,
    *,
    batch_size: int = 4096,
    progress: bool = False,
) -> tuple[list[npt.NDArray[np.float32]], list[float]]:
    """Full Lloyd iterations for several centre sets at once, one streaming read per pass.

    Each pass reads every feature once (``source.batches``, fixed order), accumulates per cluster the
    float64 sum and count of the features nearest to it, then moves each centre to its mean; a
    centre without features keeps its place. A final read measures the inertia of the result.

    Args:
        source: the features.
        centers: ``R`` arrays of ``(K, C)`` float32 initial centres (e.g. one per restart).
        passes: Lloyd iterations (0: only the inertia is measured).

    Returns:
        ``R`` arrays of ``(K, C)`` float32 centres and ``R`` inertias (sum of squared distances to
        the nearest centre over all features).
    """
    current = [np.ascontiguousarray(c, dtype=np.float32) for c in centers]
    n_total = source.count()
    with tqdm(total=n_total * passes, desc="Lloyd passes", unit="mask", disable=not progress) as bar:
        for _ in range(passes):
            sums = [np.zeros(c.shape, dtype=np.float64) for c in current]
            counts = [np.zeros(c.shape[0], dtype=np.int64) for c in current]
            for batch in source.batches(batch_size):
                for r, c in enumerate(current):
                    best, _ = _nearest(batch, c)
                    onehot = np.zeros((c.shape[0], batch.shape[0]), dtype=np.float64)
                    onehot[best, np.arange(batch.shape[0])] = 1.0
                    sums[r] += onehot @ batch.astype(np.float64)
                    counts[r] += np.bincount(best, minlength=c.shape[0])
                bar.update(batch.shape[0])
            for r, c in enumerate(current):
                filled = counts[r] > 0
                moved = c.astype(np.float64)
                moved[filled] = sums[r][filled] / counts[r][filled, None]
                current[r] = np.ascontiguousarray(moved, dtype=np.float32)
    inertia = [0.0] * len(current)
    for batch in source.batches(batch_size):
        for r, c in enumerate(current):
            inertia[r] += float(_nearest(batch, c)[1].sum())
    return current, inertia


def _restart_seed(seed: int, restart: int) -> int:
    """Seed of restart ``r``: ``seed`` itself for the first one (so ``restarts=1`` is the original fit)."""
    if restart == 0:
        return seed
    return int(np.random.SeedSequence([seed, restart]).generate_state(1)[0] & 0x7FFFFFFF)


def _reservoir_sample(
    source: FeatureSource, capacity: int, batch_size: int, rng: np.random.Generator, progress: bool
) -> npt.NDArray[np.float32]:
    reservoir = _Reservoir(capacity, source.dim, rng)
    with tqdm(total=source.count(), desc="sampling features", unit="mask", disable=not progress) as bar:
        for batch in source.batches(batch_size):
            reservoir.add(batch)
            bar.update(batch.shape[0])
    return reservoir.sample()


def fit_clusters(
    paths: Sequence[Path],
    k: int = 46,
    *,
    seed: int = 0,
    batch_size: int = 4096,
    passes: int = 3,
    reservoir_size: int = 20000,
    refine_passes: int = 0,
    restarts: int = 1,
    progress: bool = True,
    shuffle_chunk_batches: int = SHUFFLE_CHUNK_BATCHES,
) -> ClusterModel:
    """Fit ``k`` cluster centres to the features of all mask tables with bounded memory.

    :func:`fit_kmeans` on :class:`TableFeatures`; ``paths`` may come in any order (see module docstring).
    ``shuffle_chunk_batches``: rows are shuffled within chunks of this many batches.
    """
    if not paths:
        raise ValueError("fit_clusters needs at least one mask table")
    return fit_kmeans(
        TableFeatures.of(paths, shuffle_chunk_batches),
        k,
        seed=seed,
        batch_size=batch_size,
        passes=passes,
        reservoir_size=reservoir_size,
        refine_passes=refine_passes,
        restarts=restarts,
        progress=progress,
    )


def fit_kmeans(
    source: FeatureSource,
    k: int = 46,
    *,
    seed: int = 0,
    batch_size: int = 4096,
    passes: int = 3,
    reservoir_size: int = 20000,
    refine_passes: int = 0,
    restarts: int = 1,
    progress: bool = True,
) -> ClusterModel:
    """Fit ``k`` cluster centres to every feature of ``source`` (see the module docstring for the steps).

    Args:
        source: the features (:class:`TableFeatures`, :class:`ArrayFeatures` or an engine's own).
        k: number of clusters (46 in ALPS).
        seed: seed for every random choice.
        batch_size: rows per mini-batch update and per streamed batch (raised to ``k`` if smaller).
        passes: epochs of mini-batch updates over the data.
        reservoir_size: features sampled for the k-means++ initialisation (raised to ``k`` if smaller).
        refine_passes: full Lloyd passes after the mini-batch epochs (one read of the features each).
        restarts: independent initialisations fitted side by side; the lowest final inertia wins.
        progress: show tqdm progress bars.

    Returns:
        The model. With fewer masks than ``k`` in total, ``k_effective`` is the number of masks (each
        mask its own cluster) and the reduction is recorded in ``warnings`` and issued as a
        ``RuntimeWarning``; with no masks at all the model has zero centres.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if passes < 0 or refine_passes < 0:
        raise ValueError(f"passes and refine_passes must be >= 0, got {passes} and {refine_passes}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    dim = source.dim
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    n_total = source.count()
    sample = _reservoir_sample(source, max(reservoir_size, min(k, n_total)), batch_size, rng, progress)

    def model(
        centers: npt.NDArray[np.float32], n_seen: int, inertia: float, per_restart: list[float]
    ) -> ClusterModel:
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
            refine_passes=refine_passes,
            restarts=restarts,
            restart_inertia=per_restart,
            warnings=notes,
        )

    k_eff = min(k, n_total)
    if k_eff < k:
        notes.append(f"only {n_total} masks in total: k reduced from {k} to {k_eff}")
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    if k_eff == 0:
        return model(np.zeros((0, dim), dtype=np.float32), 0, 0.0, [])

    seeds = [_restart_seed(seed, r) for r in range(restarts)]
    inits = [kmeans_plusplus(sample, n_clusters=k_eff, random_state=s)[0] for s in seeds]
    step = max(batch_size, k_eff)  # the first partial_fit call needs at least k rows
    kmeans = [
        MiniBatchKMeans(
            n_clusters=k_eff, init=init, n_init=1, batch_size=step, random_state=s, compute_labels=False
        )
        for init, s in zip(inits, seeds, strict=True)
    ]
    n_seen = 0
    with tqdm(total=n_total * passes, desc="k-means", unit="mask", disable=not progress) as bar:
        for _ in range(passes):
            for batch in source.shuffled(step, rng):
                for km in kmeans:
                    km.partial_fit(batch)
                n_seen += batch.shape[0]
                bar.update(batch.shape[0])
    starts = [
        np.ascontiguousarray(km.cluster_centers_ if n_seen else init, dtype=np.float32)
        for km, init in zip(kmeans, inits, strict=True)
    ]
    centers, inertia = lloyd_passes(
        source, starts, refine_passes, batch_size=max(batch_size, 1), progress=progress
    )
    best = int(np.argmin(inertia))  # NaN-safe enough: argmin of all-NaN is 0
    if not all(math.isfinite(v) for v in inertia):
        notes.append("inertia is not finite: features contain NaN or inf")
    return model(centers[best], n_seen, inertia[best], inertia)


@dataclass(frozen=True)
class KChoice:
    """Result of :func:`choose_k`: the chosen K and, per candidate, inertia and silhouette on the sample."""

    k: int
    candidates: tuple[int, ...]
    inertia: tuple[float, ...]
    silhouette: tuple[float, ...]
    sample_size: int
    rule: str = "largest silhouette (ties: the larger K)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "rule": self.rule,
            "sample_size": self.sample_size,
            "candidates": [
                {"k": k, "inertia": i, "silhouette": s}
                for k, i, s in zip(self.candidates, self.inertia, self.silhouette, strict=True)
            ],
        }


def choose_k(
    source: FeatureSource,
    ks: Sequence[int],
    *,
    seed: int = 0,
    sample_size: int = 5000,
    batch_size: int = 4096,
) -> KChoice:
    """Pick K from candidates ``ks`` by the mean silhouette of a k-means fit on a uniform sample.

    One streaming read draws ``sample_size`` features uniformly (reservoir); for each K, full-batch
    k-means (k-means++, 3 initialisations, ``random_state=seed``) is fitted on the sample, and its
    inertia and mean silhouette (Euclidean, on the same sample) are recorded. The rule: the K with
    the largest silhouette, the larger K on ties (to 4 decimals). Candidates above the sample size
    are skipped (silhouette needs K < samples).

    Returns:
        The choice and the table behind it (for the manifest).
    """
    ks = sorted({int(v) for v in ks})
    if not ks or ks[0] < 2:
        raise ValueError(f"choose_k needs candidate K values >= 2, got {list(ks)}")
    rng = np.random.default_rng(seed)
    sample = _reservoir_sample(source, sample_size, batch_size, rng, progress=False).astype(np.float64)
    usable = [k for k in ks if k < sample.shape[0]]
    if not usable:
        raise ValueError(f"only {sample.shape[0]} features: every candidate K in {ks} is too large")
    inertias, sils = [], []
    for k in usable:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(sample)
        inertias.append(float(km.inertia_))
        labels = km.labels_
        sils.append(float(silhouette_score(sample, labels)) if len(set(labels.tolist())) > 1 else -1.0)
    rounded = np.round(np.array(sils), 4)
    chosen = int(usable[int(np.flatnonzero(rounded == rounded.max())[-1])])
    return KChoice(chosen, tuple(usable), tuple(inertias), tuple(sils), int(sample.shape[0]))


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
