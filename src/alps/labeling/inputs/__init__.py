"""Input kinds of ``alps label``: images, GeoTIFF scenes (tiles), medical volumes (slices).

:func:`plan_items` is the one place that looks at what kind each input is; everything after it
works through the :class:`~alps.labeling.inputs.base.Item` / ``WorkUnit`` protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alps.core.images import ImageFile, find_images
from alps.labeling.inputs.base import Finisher, Item
from alps.labeling.inputs.image import ImageItem

__all__ = ["Plan", "plan_items"]


@dataclass
class Plan:
    """The entries of a run in output order, their items, and what could not be planned."""

    entries: list[ImageFile]  # every image, scene and kept volume slice, in output order
    items: dict[str, Item]  # id -> item (entries that could be planned)
    errors: dict[str, str] = field(default_factory=dict)  # id -> why it could not be planned
    finishers: list[Finisher] = field(default_factory=list)  # volumes
    settings: dict[str, Any] = field(default_factory=dict)  # manifest parameters (e.g. "volumes")


def plan_items(inputs: list[Path], out: Path, config: Any, model_input: int) -> Plan:
    """Find the inputs, decide each one's kind, and slice volumes into ``out/slices``.

    Args:
        inputs: files and folders given by the user.
        out: output directory (volume slices are written under it).
        config: the run's :class:`alps.labeling.config.LabelConfig`.
        model_input: the model's encoder input side in pixels (default tile size of scenes).
    """
    from alps.geo.raster import is_scene, parse_bands
    from alps.labeling.inputs.scene import SceneItem, TileSettings, plan_scene
    from alps.labeling.inputs.volume import VolumeJob
    from alps.medical.volume import MIN_FOREGROUND, check_axis, find_volumes, non_volume_inputs, parse_window

    volumes = VolumeJob(
        tuple(find_volumes(inputs)),
        check_axis(config.axis),
        parse_window(config.window),
        MIN_FOREGROUND if config.min_foreground is None else float(config.min_foreground),
    )
    try:
        files = find_images(non_volume_inputs(inputs))
    except ValueError:
        if not volumes.volumes:
            raise
        files = []  # volumes only
    bands = parse_bands(config.bands)
    tiling = TileSettings(bands, config.tile_size, config.tile_overlap)
    plain_side = tiling.resolve(model_input)[0]
    plan = Plan(list(files), {})
    for file in files:
        if not is_scene(file.path, max_plain_side=plain_side, bands_given=bands is not None):
            plan.items[file.id] = ImageItem(file, file.id)
            continue
        try:
            plan.items[file.id] = SceneItem(file, plan_scene(file.path, tiling, model_input), file.id)
        except Exception as err:  # rasterio raises many types for unreadable rasters
            plan.errors[file.id] = f"{file.path}: cannot read raster ({err})"
    if volumes.volumes:
        plan.settings["volumes"] = volumes.settings()
        volume_set = volumes.prepare(out, [f.id for f in files])
        plan.finishers.append(volume_set)
        for item in volume_set.items():
            plan.entries.append(item.file)
            plan.items[item.file.id] = item
    return plan
