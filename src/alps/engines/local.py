"""The local engine: every stage in this process, one unit after another, with progress bars."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from alps.core.images import ImageReadError
from alps.labeling.inputs.base import Item, PaintContext, Painted, UnitResult, WorkUnit
from alps.labeling.stages import Clustering, MaskJob, cluster_tables, process_unit, report_estimate


class LocalEngine:
    """Runs phase A, B and C in the calling process (the default engine; needs nothing else)."""

    name = "local"

    def process(self, units: Sequence[WorkUnit], job: MaskJob, *, progress: bool) -> Iterator[UnitResult]:
        if not units:
            return
        source = job.source()
        per_item = Counter(u.item_id for u in units)
        first_seen: set[str] = set()
        for unit in tqdm(units, desc="masks", unit="unit", disable=not progress):
            result = process_unit(unit, source, job)
            if unit.item_id not in first_seen and per_item[unit.item_id] > 1 and result.status == "ok":
                first_seen.add(unit.item_id)
                report_estimate(
                    unit.item_id, "tile", per_item[unit.item_id], sum(result.seconds.values()), progress
                )
            yield result

    def cluster(
        self, tables: Sequence[Path], k: int | str, seed: int, job: MaskJob, *, progress: bool
    ) -> Clustering:
        return cluster_tables(tables, k, seed, job.out, progress=progress, **dict(job.cluster_options))

    def paint(
        self, jobs: Sequence[tuple[Item, str]], ctx: PaintContext, *, progress: bool
    ) -> Iterator[tuple[str, Painted | str]]:
        for item, split in tqdm(jobs, desc="labels", unit="image", disable=not progress):
            try:
                yield item.file.id, item.paint(ctx, split)
            except ImageReadError as err:
                yield item.file.id, str(err)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": 1}
