from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from alps.labeling.cluster import (
    ArrayFeatures,
    ClusterModel,
    TableFeatures,
    _Reservoir,
    assign_clusters,
    choose_k,
    fit_clusters,
    fit_kmeans,
    lloyd_passes,
)
from alps.labeling.table import read_mask_table, table_features, write_mask_table

DIM = 12


def write_tables(root: Path, sizes: list[int], *, seed: int = 0, n_blobs: int = 5) -> dict[str, np.ndarray]:
    """One table per image with features drawn from well-separated Gaussian blobs; returns true blob ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, DIM)) * 8.0
    truth = {}
    empty = np.zeros((2, 2), dtype=bool)
    for i, n in enumerate(sizes):
        blob = rng.integers(0, n_blobs, size=n)
        features = (centres[blob] + rng.normal(size=(n, DIM))).astype(np.float32)
        records = [{"segmentation": empty, "area": 0, "bbox": [0, 0, 0, 0]} for _ in range(n)]
        image_id = f"img{i:03d}"
        write_mask_table(root / f"{image_id}.parquet", image_id, records, features, (2, 2))
        truth[image_id] = blob
    return truth


@pytest.fixture
def blobs(tmp_path: Path) -> tuple[list[Path], dict[str, np.ndarray]]:
    truth = write_tables(tmp_path, [30] * 16)
    return sorted(tmp_path.glob("*.parquet")), truth


def fit(paths: list[Path], k: int = 5, seed: int = 1) -> ClusterModel:
    return fit_clusters(paths, k, seed=seed, batch_size=64, passes=2, reservoir_size=200, progress=False)


def test_recovers_separated_blobs(blobs: tuple[list[Path], dict[str, np.ndarray]]) -> None:
    paths, truth = blobs
    model = fit(paths)
    assert model.centers.shape == (5, DIM) and model.centers.dtype == np.float32
    assert model.n_features == 480 and model.n_seen == 2 * 480
    assigned = assign_clusters(paths, model)
    ids = sorted(truth)
    assert sorted(assigned) == ids
    ari = adjusted_rand_score(
        np.concatenate([truth[i] for i in ids]), np.concatenate([assigned[i] for i in ids])
    )
    assert ari > 0.95
    # written into the tables too
    for path in paths:
        stored = read_mask_table(path).column("cluster").to_numpy()
        np.testing.assert_array_equal(stored, assigned[path.stem])
    # inertia is the exact within-cluster sum of squares (noise variance 1 per dimension)
    assert model.inertia == pytest.approx(480 * DIM, rel=0.25)


def test_same_seed_same_result_whatever_the_path_order(
    blobs: tuple[list[Path], dict[str, np.ndarray]],
) -> None:
    paths, _ = blobs
    first = fit(paths)
    again = fit(paths)
    shuffled = fit(list(np.random.default_rng(7).permutation(np.array(paths, dtype=object))))
    np.testing.assert_array_equal(first.centers, again.centers)
    np.testing.assert_array_equal(first.centers, shuffled.centers)
    a = assign_clusters(paths, first, write=False)
    b = assign_clusters(paths[::-1], shuffled, write=False)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fewer_masks_than_k(tmp_path: Path) -> None:
    paths = [tmp_path / "img000.parquet", tmp_path / "img001.parquet"]
    write_tables(tmp_path, [4, 3])
    with pytest.warns(RuntimeWarning, match="k reduced from 46 to 7"):
        model = fit_clusters(paths, 46, progress=False)
    assert model.k == 46 and model.k_effective == 7
    assert model.warnings and "7" in model.warnings[0]
    assigned = assign_clusters(paths, model)
    labels = np.concatenate([assigned["img000"], assigned["img001"]])
    assert labels.dtype == np.int32 and len(labels) == 7
    assert set(labels.tolist()) == set(range(7))  # each mask is its own centre


def test_no_masks_at_all(tmp_path: Path) -> None:
    write_tables(tmp_path, [0, 0])
    paths = sorted(tmp_path.glob("*.parquet"))
    with pytest.warns(RuntimeWarning, match="k reduced"):
        model = fit_clusters(paths, 46, progress=False)
    assert model.k_effective == 0 and model.centers.shape == (0, DIM)
    assigned = assign_clusters(paths, model)
    assert all(v.shape == (0,) for v in assigned.values())


def test_save_load_round_trip(tmp_path: Path, blobs: tuple[list[Path], dict[str, np.ndarray]]) -> None:
    paths, _ = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fit(paths)
    path = tmp_path / "model" / "clusters.npz"
    model.save(path)
    loaded = ClusterModel.load(path)
    np.testing.assert_array_equal(loaded.centers, model.centers)
    assert loaded.metadata() == model.metadata()
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"centers", "metadata"}
    features = np.random.default_rng(0).normal(size=(10, DIM)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))


def test_predict_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    model = ClusterModel(centers=rng.normal(size=(7, 3)).astype(np.float32), seed=0, n_seen=0, inertia=0.0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    d = ((x[:, None, :] - model.centers[None]) ** 2).sum(-1)
    labels, dists = model.nearest(x, batch_size=16)
    np.testing.assert_array_equal(labels, d.argmin(1))
    np.testing.assert_allclose(dists, d.min(1), rtol=1e-4, atol=1e-5)


def test_reservoir_is_uniform() -> None:
    reservoir = _Reservoir(500, 1, np.random.default_rng(0))
    stream = np.arange(20000, dtype=np.float32)[:, None]
    for start in range(0, 20000, 1000):
        reservoir.add(stream[start : start + 1000])
    sample = reservoir.sample()[:, 0]
    assert len(np.unique(sample)) == 500
    # uniform over 0..19999: mean 10000, sd of the mean ~ 5774 / sqrt(500) = 258
    assert abs(sample.mean() - 10000) < 1000
    assert (sample >= 10000).mean() == pytest.approx(0.5, abs=0.1)


def _overlapping(seed: int = 3) -> ArrayFeatures:
    """Features where mini-batch k-means stops short of a local optimum: 12 overlapping blobs, 40 images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, DIM)) * 1.5
    parts = []
    for _ in range(40):
        blob = rng.integers(0, 12, size=25)
        parts.append((centres[blob] + rng.normal(size=(25, DIM))).astype(np.float32))
    return ArrayFeatures(tuple(parts))


def test_array_source_fits_exactly_like_the_tables(blobs: tuple[list[Path], dict[str, np.ndarray]]) -> None:
    paths, _ = blobs
    tables = TableFeatures.of(paths)
    arrays = ArrayFeatures(tuple(table_features(read_mask_table(p)) for p in tables.paths))
    options = {"seed": 1, "batch_size": 64, "passes": 2, "reservoir_size": 200, "progress": False}
    a = fit_kmeans(arrays, 5, refine_passes=2, restarts=2, **options)  # type: ignore[arg-type]
    b = fit_clusters(paths, 5, refine_passes=2, restarts=2, **options)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.restart_inertia == b.restart_inertia


def test_lloyd_passes_converge_to_full_batch_kmeans() -> None:
    source = _overlapping()
    data = np.concatenate(source.parts).astype(np.float64)
    init = data[:12].astype(np.float32)
    (ours,), (inertia,) = lloyd_passes(source, [init], 300, batch_size=97)
    reference = KMeans(
        12, init=init.astype(np.float64), n_init=1, algorithm="lloyd", tol=0, max_iter=300
    ).fit(data)
    np.testing.assert_allclose(ours, reference.cluster_centers_, atol=1e-4)
    assert inertia == pytest.approx(reference.inertia_, rel=1e-5)


def test_refinement_and_restarts_lower_the_inertia(tmp_path: Path) -> None:
    source = _overlapping()
    options = {"seed": 0, "batch_size": 64, "passes": 2, "reservoir_size": 500, "progress": False}
    plain = fit_kmeans(source, 12, **options)  # type: ignore[arg-type]
    refined = fit_kmeans(source, 12, refine_passes=10, **options)  # type: ignore[arg-type]
    restarted = fit_kmeans(source, 12, refine_passes=10, restarts=4, **options)  # type: ignore[arg-type]
    assert refined.inertia < plain.inertia * 0.99
    assert restarted.inertia == min(restarted.restart_inertia) <= refined.inertia
    assert restarted.restart_inertia[0] == refined.inertia  # restart 0 is the single-start fit
    assert len(set(restarted.restart_inertia)) > 1
    again = fit_kmeans(source, 12, refine_passes=10, restarts=4, **options)  # type: ignore[arg-type]
    np.testing.assert_array_equal(again.centers, restarted.centers)
    restarted.save(tmp_path / "model.npz")
    loaded = ClusterModel.load(tmp_path / "model.npz")
    assert loaded.refine_passes == 10 and loaded.restarts == 4


def test_choose_k_finds_the_number_of_blobs(tmp_path: Path) -> None:
    write_tables(tmp_path, [40] * 10, n_blobs=4, seed=5)
    choice = choose_k(TableFeatures.of(sorted(tmp_path.glob("*.parquet"))), [2, 3, 4, 6, 8], seed=0)
    assert choice.k == 4 and choice.sample_size == 400
    assert choice.as_dict()["candidates"][2]["k"] == 4
    with pytest.raises(ValueError, match=">= 2"):
        choose_k(TableFeatures.of(sorted(tmp_path.glob("*.parquet"))), [1, 4])


def test_cluster_tables_auto_chooses_k_then_fits_it_as_an_explicit_k(tmp_path: Path) -> None:
    from alps.labeling.stages import cluster_tables

    write_tables(tmp_path, [40] * 10, n_blobs=4, seed=5)
    tables = sorted(tmp_path.glob("*.parquet"))
    auto = cluster_tables(tables, "auto", 0, tmp_path, progress=False, candidates=(2, 3, 4, 6, 8))
    assert auto.choice is not None and auto.choice["k"] == 4 and auto.k == 4
    assert [row["k"] for row in auto.choice["candidates"]] == [2, 3, 4, 6, 8] and auto.notes == []
    edge = cluster_tables(tables, "auto", 0, tmp_path, progress=False, candidates=(2, 3, 4))
    assert edge.k == 4 and "largest candidate" in edge.notes[0]  # the range may be too small
    explicit = cluster_tables(tables, 4, 0, tmp_path, progress=False)
    assert explicit.choice is None
    assert np.array_equal(auto.model.centers, explicit.model.centers)
    assert all(np.array_equal(auto.assignments[i], explicit.assignments[i]) for i in explicit.assignments)
    # fewer masks than the smallest candidate: no choice is possible, the smallest K is fitted
    few = cluster_tables(tables[:1], "auto", 0, tmp_path, progress=False, candidates=(40, 64))
    assert few.choice is None and few.k == 40 and "too few" in few.notes[0]
