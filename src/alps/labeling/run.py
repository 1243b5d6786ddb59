"""``alps label``: an image collection in, a pseudo-labelled segmentation dataset out.

The run, as the stages read (each one a function of :mod:`alps.labeling.stages`, run by an engine
of :mod:`alps.engines`)::

    plan      inputs -> items (images, scenes, volume slices) -> work units      labeling.inputs
    resume    units whose tables exist for these parameters and bytes are skipped   labeling.resume
    phase A   per unit: masks (+ embedding) -> gate -> features -> mask table   stages.process_unit
    phase B   all tables -> (K if auto) -> streaming k-means -> cluster per mask   stages.cluster_tables
    phase C   per item: label map / raster, overlay, vectors                     Item.paint
    finish    volumes re-assembled, COCO, splits, stale files removed, manifest  labeling.dataset

Output directory::

    DIR/params.json              parameters that the tables depend on (checked on every re-run)
    DIR/tables/<id>.parquet      mask table per image (a scene: DIR/tables/<id>/<tile>.parquet)
    DIR/state/<id>.json          per item: input fingerprint, parameter hash, settings, counts
    DIR/cluster_model.npz        cluster centres
    DIR/labels/<split>/<id>.png  pseudo-label maps (uint8, or uint16 when K > 255; 255 = unlabeled)
    DIR/images/<split>/<id>.*    the labelled images;  DIR/overlays/<id>.jpg  colour overlays
    DIR/splits/<split>.txt, DIR/manifest.json, DIR/log.txt

Resuming: phase A is skipped for units whose tables were made with the same parameters from the
same input bytes; phases B and C always re-run (cheap and deterministic), so an interrupted run,
re-run, yields byte-identical labels. Changing a parameter the tables depend on is refused with
the list of changes unless ``force``; the others (``clusters``, ``val_fraction``, ...) reuse them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alps import __version__
from alps.core.files import remove_stale_files, write_json
from alps.core.splits import split_ids
from alps.core.timing import StageTimer
from alps.labeling.config import LabelConfig, split_overrides
from alps.labeling.dataset import ImageRecord, LabelRun, write_manifest, write_splits
from alps.labeling.inputs import Plan, plan_items
from alps.labeling.inputs.base import Item, PaintContext, UnitResult, WorkUnit
from alps.labeling.resume import (
    STATE_FIELDS,
    OutputDirError,
    ParamsMismatchError,
    check_output_dir,
    check_params,
    fingerprint,
    hash_params,
    load_state,
    state_matches,
)
from alps.labeling.sources import (
    ResolvedModel,
    check_generator_kwargs,
    generator_settings,
    model_input,
    resolve_model,
    slic_records,
)
from alps.labeling.stages import Clustering, MaskJob

__all__ = ["LabelRun", "OutputDirError", "ParamsMismatchError", "label", "slic_records"]

log = logging.getLogger("alps.labeling.run")

FORMAT_VERSION = 1  # bump when table contents change meaning; old outputs are then refused
MANIFEST_FIELDS = (  # config fields copied into the manifest's "parameters", in this order
    "masks", "clusters", "area_threshold", "min_area", "points_per_side", "prompt", "mode", "device", "seed",
    "val_fraction", "tile_size", "tile_overlap", "vector_format", "features", "cluster_refine_passes",
    "cluster_restarts", "cluster_candidates",
)  # fmt: skip


@dataclass
class RunContext:
    """One labelling run: where, with what, and what has happened so far."""

    out: Path
    inputs: list[Path]
    config: LabelConfig
    model: ResolvedModel
    parameters: dict[str, Any]  # the manifest's "parameters"
    table_params: dict[str, Any]  # what the mask tables depend on (params.json)
    params_hash: str
    timer: StageTimer = field(default_factory=StageTimer)
    notes: list[str] = field(default_factory=list)
    records: dict[str, ImageRecord] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def mask_job(self) -> MaskJob:
        c = self.config
        return MaskJob(
            self.out, self.model, c.masks, c.points_per_side, c.prompt, c.mode,
            self.parameters["generator_kwargs"], c.device, c.seed, c.area_threshold, c.min_area, c.features,
            (("refine_passes", c.cluster_refine_passes), ("restarts", c.cluster_restarts),
             ("candidates", c.cluster_candidates)),
        )  # fmt: skip


def label(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    config: LabelConfig | None = None,
    *,
    engine: Any = "local",
    **overrides: Any,
) -> LabelRun:
    """Turn the images under ``inputs`` into a pseudo-labelled dataset in ``out``.

    Args:
        inputs: image files and/or folders (searched recursively for PNG, JPEG, TIFF), GeoTIFF
            scenes, NIfTI volumes (``.nii``, ``.nii.gz``) and DICOM series folders.
        out: output directory; must not be or lie inside an input (nor hold one).
        config: a :class:`~alps.labeling.config.LabelConfig` (default: all defaults); every field
            is documented there and is also an ``alps label`` flag and a ``--config`` YAML key.
        engine: ``"local"`` (this process), ``"ray"`` (a Ray cluster) or an engine object.
        **overrides: ``LabelConfig`` fields on top of ``config`` (``clusters=8``, ``clusters="auto"``,
            ...); ``model`` may also be a ready ``Sam`` module (its weights are hashed for the resume
            check). Any other keyword is a ``SamAutomaticMaskGenerator`` setting (``pred_iou_thresh``,
            ``crop_n_layers``, ...; SLIC: ``n_segments``, ``compactness``, ``sigma``).

    Returns:
        A :class:`~alps.labeling.dataset.LabelRun`; the same information is in ``out/manifest.json``.

    Raises:
        OutputDirError, ParamsMismatchError, ValueError: before any work is done.
    """
    from alps.core.runtime import tuned_malloc
    from alps.engines import get_engine

    ctx = prepare(inputs, out, config, overrides)
    runner = get_engine(engine)
    with tuned_malloc(), log_to(ctx.out / "log.txt"):  # ~20 % faster CPU masks; restored afterwards
        log.info("alps label %s -> %s (engine %s)", __version__, ctx.out, runner.name)
        return execute(ctx, runner)


def execute(ctx: RunContext, engine: Any) -> LabelRun:
    """Plan, resume, run phases A-C on ``engine``, finish the dataset; the orchestrator."""
    with ctx.timer("plan inputs"):
        plan = plan_items(ctx.inputs, ctx.out, ctx.config, model_input(ctx.model))
        ctx.parameters.update(plan.settings)
    with ctx.timer("hash inputs"):
        todo = pending_units(plan, ctx)
    with ctx.timer("masks"):
        record_results(plan, todo, engine.process(todo, ctx.mask_job(), progress=ctx.config.progress), ctx)
    tables = [
        t for e in plan.entries if ctx.records[e.id].status == "ok" for t in plan.items[e.id].tables(ctx.out)
    ]
    with ctx.timer("cluster"):
        clustering = engine.cluster(tables, ctx.config.clusters, ctx.config.seed, ctx.mask_job(),
                                    progress=ctx.config.progress)  # fmt: skip
    ctx.notes.extend(clustering.notes)
    with ctx.timer("labels"):
        produced, class_pixels = paint_items(plan, clustering, engine, ctx)
    with ctx.timer("finish"):
        produced |= finish_items(plan, clustering, ctx)
    return write_run(plan, clustering, class_pixels, produced, engine, ctx)


def prepare(
    inputs: str | Path | Sequence[str | Path], out: str | Path, config: LabelConfig | None,
    overrides: dict[str, Any],
) -> RunContext:  # fmt: skip
    """Check everything that can be checked before any work: config, inputs, output dir, params."""
    fields, generator = split_overrides(overrides)
    module = fields.pop("model", None) if isinstance(fields.get("model"), torch.nn.Module) else None
    config = (config or LabelConfig()).replace(**fields)
    if generator:
        config = config.replace(generator={**config.generator, **generator})
    check_generator_kwargs(config.masks, config.generator)
    from alps.geo.raster import parse_bands
    from alps.geo.vectors import vector_suffixes

    vector_suffixes(config.vector_format)
    band_list = parse_bands(config.bands)
    input_list = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    out_dir = Path(out).expanduser()
    check_output_dir(input_list, out_dir)
    model = resolve_model(module if module is not None else config.model, config.checkpoint)
    parameters = {
        "inputs": [str(p) for p in input_list],
        "model": model.name,
        "checkpoint": model.checkpoint if model.module is None else None,
        "checkpoint_sha256": model.checkpoint_sha256,
        **{name: getattr(config, name) for name in MANIFEST_FIELDS[:10]},
        "generator_kwargs": generator_settings(model, config.prompt, config.masks, config.generator),
        "bands": list(band_list) if band_list is not None else None,
        **{name: getattr(config, name) for name in MANIFEST_FIELDS[10:]},
    }
    table_params = tables_depend_on(model, parameters)
    check_params(out_dir, table_params, config.force)
    for sub in ("tables", "state"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    return RunContext(out_dir, input_list, config, model, parameters, table_params, hash_params(table_params))


def tables_depend_on(model: ResolvedModel, p: dict[str, Any]) -> dict[str, Any]:
    """Everything the mask tables depend on (changing any of it invalidates them): ``params.json``."""
    sam = p["masks"] == "sam"
    params = {
        "format": FORMAT_VERSION,
        "model": model.name,
        "checkpoint_sha256": model.checkpoint_sha256,
        "masks": p["masks"],
        "area_threshold": p["area_threshold"],
        "min_area": p["min_area"],
        "points_per_side": p["points_per_side"],
        "prompt": p["prompt"] if sam else None,  # SLIC ignores them
        "mode": p["mode"] if sam else None,
        "device": torch.device(p["device"]).type,  # floating point differs between device types
        "generator": dict(sorted(p["generator_kwargs"].items())),
    }
    if p["features"] != "sam":  # absent for the paper's features, so earlier outputs stay valid
        params["features"] = p["features"]
    if model.checkpoint_sha256 is None:  # random initialisation: the seed picks the weights
        params["seed"] = p["seed"]
    return params


def pending_units(plan: Plan, ctx: RunContext) -> list[WorkUnit]:
    """Records for every entry; units still to do (done items are marked resumed)."""
    todo: list[WorkUnit] = []
    for entry in plan.entries:
        record = ctx.records[entry.id] = ImageRecord(
            id=entry.id, source=str(entry.path), relpath=entry.relpath
        )
        state_path = ctx.out / "state" / f"{entry.id}.json"
        state = load_state(state_path)
        try:
            print_ = fingerprint(entry.path, state)
        except OSError as err:
            record.status, record.error = "failed", f"cannot read file: {err}"
            continue
        record.sha256 = print_.sha256
        if entry.id in plan.errors:
            record.status, record.error = "failed", plan.errors[entry.id]
            continue
        item = plan.items[entry.id]
        units = list(item.units())
        if not state_matches(state, ctx.params_hash, print_, item.settings()):
            item.discard(ctx.out)
        elif (
            state is not None
            and state.get("status") == "ok"
            and all(item.unit_done(ctx.out, u) for u in units)
        ):
            for key in STATE_FIELDS:
                setattr(record, key, state[key])
            record.tiles = state.get("tiles")
            record.status, record.resumed = "ok", True
            continue
        write_json(state_path, {"id": entry.id, "status": "partial", "params_hash": ctx.params_hash,
                                "settings": item.settings(), **print_.fields()})  # fmt: skip
        missing = [u for u in units if not item.unit_done(ctx.out, u)]
        todo.extend(missing if missing or len(units) > 1 else units)  # one-unit items: redo, to describe it
    log.info("%d entries, %d unit(s) to process", len(plan.entries), len(todo))
    return todo


def record_results(plan: Plan, todo: list[WorkUnit], results: Iterable[UnitResult], ctx: RunContext) -> None:
    """Fold phase A's results into the records as they arrive: an item's state is written as soon as
    its last unit is done, so a run killed mid-way resumes after the last finished item."""
    expected = Counter(u.item_id for u in todo)
    arrived: dict[str, list[UnitResult]] = {}
    for result in results:
        arrived.setdefault(result.item_id, []).append(result)
        if len(arrived[result.item_id]) == expected[result.item_id]:
            finish_phase_a(plan.items[result.item_id], arrived.pop(result.item_id), ctx)
    for entry in plan.entries:  # planned, nothing left to do, but not finished before (a scene killed late)
        if ctx.records[entry.id].status == "pending" and entry.id in plan.items and not expected[entry.id]:
            finish_phase_a(plan.items[entry.id], [], ctx)
    ok = [e.id for e in plan.entries if ctx.records[e.id].status == "ok"]
    keep = {t for i in ok for t in plan.items[i].tables(ctx.out)}
    keep |= set((ctx.out / "tables").rglob("*.empty"))
    remove_stale_files(ctx.out / "tables", keep)  # tables of inputs no longer given, or failed
    remove_stale_files(ctx.out / "state", {ctx.out / "state" / f"{e.id}.json" for e in plan.entries})


def finish_phase_a(item: Item, results: list[UnitResult], ctx: RunContext) -> None:
    """Fill the item's record from its units' results and write its state file."""
    record = ctx.records[item.file.id]
    state_path = ctx.out / "state" / f"{item.file.id}.json"
    state = load_state(state_path) or {}
    failed = [r for r in results if r.status == "failed"]
    if failed:
        record.status, record.error = "failed", failed[0].error
        log.warning("skipped %s", failed[0].error)
        write_json(state_path, {**state, "status": "failed", "error": record.error})
        return
    for key, value in item.describe(results, ctx.out).items():
        setattr(record, key, value)
    record.status = "ok"
    fields = {key: getattr(record, key) for key in STATE_FIELDS}
    tiles = {"tiles": record.tiles} if record.tiles is not None else {}
    write_json(state_path, {**state, "source": record.source, "status": "ok", **fields, **tiles})
    log.info("%s: %d masks, %d kept", item.file.id, record.n_masks, record.n_masks_kept)


def paint_items(plan: Plan, clustering: Clustering, engine: Any, ctx: RunContext) -> tuple[set[Path], Any]:
    """Phase C: split the labelled entries, paint each one; returns the files written and pixel counts."""
    from alps.labeling.paint import palette

    ok = [e.id for e in plan.entries if ctx.records[e.id].status == "ok"]
    splits = split_ids(ok, ctx.config.val_fraction, ctx.config.seed, {i: plan.items[i].group for i in ok})
    k = clustering.k
    paint_ctx = PaintContext(
        ctx.out, clustering.assignments, k, palette(k), clustering.model, ctx.config.vector_format
    )
    jobs: list[tuple[Item, str]] = [(plan.items[i], splits[i]) for i in ok]
    produced: set[Path] = set()
    class_pixels = np.zeros(max(k, 1), dtype=np.int64)
    for item_id, painted in engine.paint(jobs, paint_ctx, progress=ctx.config.progress):
        record = ctx.records[item_id]
        record.split = splits[item_id]
        if isinstance(painted, str):  # the input changed or vanished since phase A
            record.status, record.error = "failed", painted
            continue
        produced.update(painted.files)
        record.n_labelled_pixels = int(painted.counts.sum())
        class_pixels[: painted.counts.size] += painted.counts
        record.image, record.label, record.overlay = painted.image, painted.label, painted.overlay
        record.table, record.vector = painted.table, painted.vector
    return produced, class_pixels


def finish_items(plan: Plan, clustering: Clustering, ctx: RunContext) -> set[Path]:
    """Joint outputs (volumes, COCO), split lists, and removal of outputs of earlier inputs."""
    ok = [e.id for e in plan.entries if ctx.records[e.id].status == "ok"]
    labels = {i: ctx.out / str(ctx.records[i].label) for i in ok if ctx.records[i].label}
    produced: set[Path] = set()
    for finisher in plan.finishers:
        produced |= finisher.finish(ctx.out, labels)
        ctx.notes.extend(finisher.notes())
    plain = [i for i in ok if str(ctx.records[i].table).endswith(".parquet")]
    if plain and clustering.k:
        from alps.labeling.coco import write_coco_instances

        coco_path = ctx.out / "coco" / "instances.json"
        images = [{"id": i, "file_name": ctx.records[i].image, "height": ctx.records[i].height,
                   "width": ctx.records[i].width} for i in plain]  # fmt: skip
        write_coco_instances(coco_path, images, [ctx.out / "tables" / f"{i}.parquet" for i in plain],
                             clustering.assignments, clustering.k)  # fmt: skip
        produced.add(coco_path)
    return produced


def write_run(
    plan: Plan, clustering: Clustering, class_pixels: Any, produced: set[Path], engine: Any, ctx: RunContext
) -> LabelRun:
    """Stale-output removal, split lists, summary notes and ``manifest.json``."""
    for folder in ("labels", "images", "overlays", "vectors", "coco"):
        remove_stale_files(ctx.out / folder, produced)
    records = [ctx.records[e.id] for e in plan.entries]
    ok_ids = [r.id for r in records if r.status == "ok"]
    split_lists = write_splits(ctx.out, {i: str(ctx.records[i].split) for i in ok_ids})
    failed = [r for r in records if r.status == "failed"]
    if failed:
        ctx.notes.append(f"{len(failed)} image(s) could not be read and were skipped (see manifest)")
    if not ok_ids:
        ctx.notes.append("no image could be labelled")
    k = clustering.k
    volumes = [r for f in plan.finishers for r in getattr(f, "records", [])]
    run = LabelRun(
        out=ctx.out, manifest_path=ctx.out / "manifest.json", images=records, clusters=k,
        cluster_sizes=[int(v) for v in clustering.sizes()], class_pixels=[int(v) for v in class_pixels[:k]],
        timings={"total": round(time.perf_counter() - ctx.started, 3), **ctx.timer.rounded()},
        warnings=ctx.notes, volumes=volumes,
    )  # fmt: skip
    cluster_meta = clustering.model.metadata() if clustering.model is not None else {}
    choice = {"cluster_choice": clustering.choice} if clustering.choice is not None else {}
    write_manifest(run, ctx.model, ctx.parameters, ctx.table_params, ctx.params_hash, cluster_meta,
                   split_lists, {"engine": engine.describe(), **choice})  # fmt: skip
    log.info(
        "done: %d labelled, %d failed, %d clusters, %.1f s", len(ok_ids), len(failed), k, run.timings["total"]
    )
    return run


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Send the ``alps`` loggers' INFO records to ``path`` (appended) for the duration."""
    logger = logging.getLogger("alps")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
