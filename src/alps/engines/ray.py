"""The Ray engine: the same stage functions as the local engine, spread over a Ray cluster.

- Phase A: a Ray Data pipeline over the planned work units; :class:`MaskWorker` (the model loaded
  once per actor) runs :func:`alps.labeling.stages.process_unit` in a fixed-size actor pool, each
  actor with ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs. Tables go straight from the
  actors into the shared output directory; only the small ``UnitResult`` objects come back.
- Phase B: :func:`alps.labeling.stages.cluster_tables` on the driver, exactly as the local engine
  runs it (streaming, bounded memory, same seed semantics, so the same cluster model).
- Phase C: one Ray task per item (:func:`paint_item`), at most ``2 x workers`` in flight.

Memory: units enter the object store as pickled bytes (a few hundred bytes each), results come
back the same way; an actor has at most ``max_in_flight`` batches of ``batch_size`` units queued;
the paint context (cluster model and every mask's cluster) is put into the object store once.
Faults: Ray Data restarts a killed actor and retries its batches (``max_restarts=-1``,
``max_task_retries=-1``); paint tasks are retried ``max_retries`` times; a unit whose table was
already written is simply rewritten with the same bytes. A killed driver is resumed by re-running
the command (units with tables are skipped by :func:`alps.labeling.run.pending_units`).
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm.auto import tqdm

from alps.engines._ray_workers import MaskWorker, paint_item
from alps.labeling.inputs.base import Item, PaintContext, Painted, UnitResult, WorkUnit
from alps.labeling.stages import Clustering, MaskJob, cluster_tables

__all__ = ["RayEngine", "public_address"]

MAX_UNITS_PER_BLOCK = 64  # a killed actor redoes at most one block; small blocks balance the pool


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(f"--engine ray needs Ray: pip install 'alps-seg[ray]' ({err})") from err
    return ray


def public_address(address: str | None) -> str | None:
    """``address`` without user name or password (``ray://user:pw@host:10001`` -> ``ray://host:10001``)."""
    if not address or "@" not in address:
        return address
    parts = urlsplit(address)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RayEngine:
    """Runs phase A and C on a Ray cluster, phase B on the driver.

    Args:
        address: Ray cluster to join (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None: Ray's
            default (``RAY_ADDRESS``, else the latest ``ray start`` cluster, else a new local one).
            When Ray is already initialised in this process, that connection is used.
        workers: phase-A actors (default: as many as the cluster's CPUs, or GPUs, allow).
        gpus_per_worker: GPUs per actor (fractions share a GPU); > 0 needs ``device="cuda"``.
        cpus_per_worker: CPUs per actor and per paint task.
        threads: threads of each actor, torch's and the native pools' (BLAS, OpenMP); default
            ``cpus_per_worker``. Floating point, and so the features, can differ between thread
            counts: the local engine with ``N`` threads gives the same tables as ``threads=N``.
        batch_size: units per call of an actor.
        max_in_flight: batches queued per actor (bounds object-store use and a killed actor's redo).
        init_options: more keywords for ``ray.init`` (e.g. ``runtime_env``), used when this engine
            starts the connection.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        batch_size: int = 1,
        max_in_flight: int = 2,
        threads: int | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        for label, value in (
            ("workers", workers),
            ("batch_size", batch_size),
            ("max_in_flight", max_in_flight),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be at least 1, got {value}")
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise ValueError(
                f"need cpus_per_worker > 0 and gpus_per_worker >= 0, got {cpus_per_worker}, {gpus_per_worker}"
            )
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = float(cpus_per_worker)
        self.batch_size = int(batch_size)
        self.max_in_flight = int(max_in_flight)
        self.threads = int(threads) if threads is not None else max(1, int(self.cpus_per_worker))
        self.init_options = dict(init_options or {})
        self.timings: dict[str, float] = {}
        self.connected_to: str | None = None
        self.failed = 0

    # ----------------------------------------------------------------------------------- cluster

    def connect(self) -> Any:
        """Join (or start) the cluster once; returns the ``ray`` module."""
        ray = self.ray
        if not ray.is_initialized():
            start = time.perf_counter()
            ray.init(address=self.address, log_to_driver=True, **self.init_options)
            self.timings["connect"] = round(time.perf_counter() - start, 3)
        if self.connected_to is None:
            ctx = ray.get_runtime_context()
            self.connected_to = public_address(self.address) or getattr(ctx, "gcs_address", None)
        data_ctx = ray.data.DataContext.get_current()
        data_ctx.enable_progress_bars = False  # ours: one bar per phase
        data_ctx.verbose_progress = False
        return ray

    def pool_size(self) -> int:
        """Phase-A actors: ``workers``, else what the cluster's CPUs (and GPUs) hold."""
        if self.workers is not None:
            return self.workers
        resources = self.ray.cluster_resources()
        fits = int(resources.get("CPU", 1) // self.cpus_per_worker)
        if self.gpus_per_worker:
            fits = min(fits, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(fits, 1)

    def actor_device(self, job: MaskJob) -> str:
        import torch

        kind = torch.device(job.device).type
        if self.gpus_per_worker and kind != "cuda":
            raise ValueError(
                f"--gpus-per-worker {self.gpus_per_worker:g} needs --device cuda (got {job.device})"
            )
        if kind == "cuda" and not self.gpus_per_worker:
            raise ValueError("--device cuda with --engine ray needs --gpus-per-worker > 0 (e.g. 1)")
        return kind  # an actor sees only the GPUs Ray gave it, as cuda:0...

    # ----------------------------------------------------------------------------------- phases

    def process(self, units: Sequence[WorkUnit], job: MaskJob, *, progress: bool) -> Iterator[UnitResult]:
        if not units:
            return
        ray = self.connect()
        from ray.data import ActorPoolStrategy

        device = self.actor_device(job)
        size = min(self.pool_size(), len(units))
        blocks = min(len(units), max(4 * size, math.ceil(len(units) / MAX_UNITS_PER_BLOCK)))
        start = time.perf_counter()
        dataset = ray.data.from_items(
            [{"unit": pickle.dumps(u)} for u in units], override_num_blocks=blocks
        ).map_batches(
            MaskWorker,
            fn_constructor_kwargs={
                "job": job, "device": device, "threads": self.threads, "cwd": os.getcwd()
            },
            compute=ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=self.max_in_flight),
            batch_size=self.batch_size,
            batch_format="numpy",
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker or None,
        )  # fmt: skip
        self.failed = 0
        bar = tqdm(total=len(units), desc=f"masks ({size} workers)", unit="unit", disable=not progress)
        try:
            for row in dataset.iter_rows():
                result: UnitResult = pickle.loads(row["result"])
                self.failed += result.status == "failed"
                bar.update(1)
                if self.failed:
                    bar.set_postfix(failed=self.failed)
                yield result
        finally:
            bar.close()
            self.timings["masks"] = round(time.perf_counter() - start, 3)
            self.timings["workers"] = size

    def cluster(
        self, tables: Sequence[Path], k: int | str, seed: int, job: MaskJob, *, progress: bool
    ) -> Clustering:
        start = time.perf_counter()
        clustering = cluster_tables(tables, k, seed, job.out, progress=progress, **dict(job.cluster_options))
        self.timings["cluster"] = round(time.perf_counter() - start, 3)
        return clustering

    def paint(
        self, jobs: Sequence[tuple[Item, str]], ctx: PaintContext, *, progress: bool
    ) -> Iterator[tuple[str, Painted | str]]:
        if not jobs:
            return
        ray = self.connect()
        start = time.perf_counter()
        task = ray.remote(paint_item).options(num_cpus=self.cpus_per_worker, max_retries=3)
        ctx_ref = ray.put(ctx)
        window = 2 * self.pool_size()
        pending: list[Any] = []
        queue = iter(jobs)
        bar = tqdm(total=len(jobs), desc="labels", unit="image", disable=not progress)
        try:
            while True:
                for item, split in queue:
                    pending.append(task.remote(item, split, ctx_ref, os.getcwd()))
                    if len(pending) >= window:
                        break
                if not pending:
                    break
                done, pending = ray.wait(pending, num_returns=1)
                item_id, painted = ray.get(done[0])
                bar.update(1)
                yield item_id, painted
        finally:
            bar.close()
            self.timings["labels"] = round(time.perf_counter() - start, 3)

    def describe(self) -> dict[str, Any]:
        ray = self.ray
        nodes = sum(1 for n in ray.nodes() if n.get("Alive")) if ray.is_initialized() else None
        return {
            "name": self.name,
            "address": self.connected_to,
            "ray_version": ray.__version__,
            "nodes": nodes,
            "workers": self.timings.get("workers", self.workers),
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "batch_size": self.batch_size,
            "max_in_flight": self.max_in_flight,
            "threads_per_worker": self.threads,
            "timings": {k: v for k, v in self.timings.items() if k != "workers"},
        }
