"""``LabelConfig``: every ``alps label`` option, once, with its default, type, help and role.

The one dataclass drives the argparse flags (:func:`alps.core.config.add_flags`), ``alps label
--config run.yaml`` (flags override file values), ``alps label --print-config``, the Python API
(``alps.label(inputs, out, config, **overrides)``), ``params.json`` and the parameter-change
refusal: a field whose metadata says ``table=True`` is one the mask tables depend on (changing it
means re-running SAM), the others only touch clustering, painting and the layout.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass
from typing import Any

from alps.core.config import option

MASK_SOURCES = ("sam", "slic")
AUTO = "auto"  # clusters="auto": K chosen by alps.labeling.cluster.choose_k
# tried by clusters="auto": about geometric steps from 8 (the demo) over 16 (medical) and 46 (the paper)
# to 92, where the trees' cluster ceiling was still rising; 7 full-batch fits on a 5000-mask sample
DEFAULT_CANDIDATES = (8, 16, 24, 32, 46, 64, 92)
MODEL_CHOICES = ("litemedsam", "vit_t", "vit_b", "vit_l", "vit_h")
VECTOR_FORMATS = ("gpkg", "geojson", "both")

GROUPS = {
    "model": "SAM model and mask generation",
    "clustering": "pseudo-classes (k-means over all masks of the dataset)",
    "dataset": "the dataset written to --out",
    "raster scenes": "GeoTIFFs that are georeferenced or larger than one tile are read tile by tile (memory "
    "bounded by the tile) and get a label GeoTIFF with the same CRS and transform, a preview and polygons",
    "medical volumes": "NIfTI files (.nii, .nii.gz) and DICOM series folders are sliced, each kept slice is "
    "labelled like an image, and the labels are stacked back into DIR/labels/<volume id>.nii.gz",
    "run": "how the run behaves",
}


@dataclass(frozen=True)
class LabelConfig:
    """Everything that defines an ``alps label`` run (see :func:`alps.labeling.run.label`)."""

    # model and masks (the mask tables depend on these)
    model: str = option("litemedsam", "SAM model type", choices=MODEL_CHOICES, group="model", table=True)
    checkpoint: str | None = option(
        None,
        "weights file or registry name (default: the model's registered weights; 'random' = random "
        "initialisation from --seed, for tests)",
        group="model", metavar="PATH", table=True,
    )  # fmt: skip
    masks: str = option(
        "sam", "mask source: SAM, or SLIC superpixels (the paper's ablation baseline)",
        choices=MASK_SOURCES, group="model", table=True,
    )  # fmt: skip
    points_per_side: int = option(
        32, "prompt grid N x N (SLIC: N*N superpixels)", group="model", metavar="N", table=True
    )
    prompt: str | None = option(
        None, "prompt type (default: the model's own: boxes for litemedsam, else points)",
        choices=("points", "boxes"), group="model", table=True,
    )  # fmt: skip
    mode: str = option(
        "exact", "exact = the official generator's masks; fast = quicker",
        choices=("exact", "fast"), group="model", table=True,
    )  # fmt: skip
    generator: dict[str, Any] = option(
        {},
        "any other SamAutomaticMaskGenerator keyword, e.g. pred_iou_thresh=0.8 (SLIC: n_segments, "
        "compactness, sigma); flag: --generator KEY=VALUE, repeatable, VALUE read as JSON",
        group="model", table=True, aliases=("--generator-arg",),
    )  # fmt: skip
    area_threshold: float = option(
        0.3, "drop masks covering more than this fraction of the image", group="model", table=True
    )
    min_area: int = option(0, "drop masks smaller than N pixels", group="model", metavar="N", table=True)
    device: str = option("cpu", "cpu or cuda", group="model", table=True)
    features: str = option(
        "sam+stats",
        "mask features: sam+stats (the SAM embedding pooled in the mask plus colour, size and shape "
        "statistics), sam (the embedding alone, as the paper), cnn:efficientnet_lite0 (an ImageNet CNN "
        "pooled in the mask)",
        choices=("sam", "sam+stats", "cnn:efficientnet_lite0"), group="model", table=True,
    )  # fmt: skip
    # clustering and dataset (cheap to redo: the tables are reused)
    clusters: int | str = option(
        46,
        "number of pseudo-classes K, or 'auto': the candidate with the largest silhouette on a sample of "
        "the mask features (see --cluster-candidates; the choice is recorded in the manifest)",
        group="clustering", metavar="K|auto", flag_type=str,
    )  # fmt: skip
    cluster_candidates: tuple[int, ...] = option(
        DEFAULT_CANDIDATES, "K values tried by --clusters auto, comma- or space-separated, each >= 2",
        group="clustering", metavar="K,K,...", flag_type=str,
    )  # fmt: skip
    seed: int = option(0, "seed of clustering, split (and of random weights)", group="clustering")
    cluster_refine_passes: int = option(
        0, "full Lloyd passes streamed over the tables after the mini-batch fit",
        group="clustering", metavar="N",
    )  # fmt: skip
    cluster_restarts: int = option(
        1, "k-means initialisations fitted side by side; the lowest inertia is kept",
        group="clustering", metavar="N",
    )  # fmt: skip
    val_fraction: float = option(
        0.0, "fraction of images in the val split, deterministic in --seed", group="dataset", metavar="F"
    )
    # raster scenes
    bands: str | None = option(
        None,
        "1-based bands shown to SAM as RGB, e.g. 4,3,2 (one band is replicated; default: the RGB-tagged "
        "bands, else 1,2,3)",
        group="raster scenes", metavar="B,B,B", table=True,
    )  # fmt: skip
    tile_size: int | None = option(
        None, "tile side in pixels (default: 1024 for SAM/MobileSAM, 512 for LiteMedSAM)",
        group="raster scenes", metavar="PX", table=True,
    )  # fmt: skip
    tile_overlap: int | None = option(
        None, "overlap of neighbouring tiles in pixels (default: tile size / 8)",
        group="raster scenes", metavar="PX", table=True,
    )  # fmt: skip
    vector_format: str = option(
        "gpkg", "polygons of the labelled regions (attributes: cluster, area in CRS units, pixels)",
        choices=VECTOR_FORMATS, group="raster scenes",
    )  # fmt: skip
    # medical volumes
    axis: int = option(2, "voxel axis to slice along", choices=(0, 1, 2), group="medical volumes", table=True)
    window: str | None = option(
        None, "intensity window, e.g. 40,400 for CT soft tissue (default: the 0.5-99.5% percentiles)",
        group="medical volumes", metavar="CENTER,WIDTH", table=True,
    )  # fmt: skip
    min_foreground: float | None = option(
        None, "skip slices with less than this share of foreground pixels (default: 0.05; 0 keeps all)",
        group="medical volumes", metavar="F", table=True,
    )  # fmt: skip
    # run control
    force: bool = option(False, "discard earlier work in --out made with other settings", group="run")
    progress: bool = option(True, "progress bars", group="run")

    def __post_init__(self) -> None:
        if self.masks not in MASK_SOURCES:
            raise ValueError(f"masks must be one of {MASK_SOURCES}, got {self.masks!r}")
        if self.cluster_refine_passes < 0 or self.cluster_restarts < 1:
            raise ValueError("cluster_refine_passes must be >= 0 and cluster_restarts >= 1")
        object.__setattr__(self, "clusters", parse_clusters(self.clusters))  # "8" (a flag) -> 8
        object.__setattr__(self, "cluster_candidates", parse_candidates(self.cluster_candidates))
        if not 0.0 < self.area_threshold <= 1.0:
            raise ValueError(f"area_threshold must be in (0, 1], got {self.area_threshold}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.tile_size is not None and self.tile_size < 64:
            raise ValueError(f"tile_size must be at least 64 px, got {self.tile_size}")
        if self.tile_overlap is not None and not 0 <= self.tile_overlap < (self.tile_size or 512) / 2:
            raise ValueError(f"tile_overlap must be in [0, tile_size/2), got {self.tile_overlap}")
        if self.vector_format not in VECTOR_FORMATS:
            raise ValueError(f"vector_format must be one of {VECTOR_FORMATS}, got {self.vector_format!r}")
        if not isinstance(self.generator, dict):
            raise TypeError(
                f"generator must be a mapping of keyword: value, got {type(self.generator).__name__}"
            )

    def replace(self, **changes: Any) -> LabelConfig:
        return dataclasses.replace(self, **changes)


def _whole(value: Any) -> int:
    """``value`` as an int if it is a whole number (int, numpy integer, or digits); else ValueError."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"not a whole number: {value!r}")


def parse_clusters(value: Any) -> int | str:
    """``clusters`` as a flag, YAML or API value gives it: a whole number >= 1, or ``"auto"``."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        k = _whole(value)
    except ValueError:
        k = 0
    if k < 1:
        raise ValueError(f"clusters must be a whole number >= 1 or 'auto', got {value!r}")
    return k


def parse_candidates(value: Any) -> tuple[int, ...]:
    """``cluster_candidates`` from ``"8,16,32"``, ``"8 16 32"`` or a sequence: sorted unique ints >= 2."""
    if isinstance(value, str):
        items: Any = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    else:
        items = value if isinstance(value, (list, tuple)) else [value]
    try:
        ks = sorted({_whole(v) for v in items})
    except ValueError:
        ks = []
    if not ks or ks[0] < 2:
        raise ValueError(
            f"cluster_candidates must be whole numbers >= 2 (a silhouette needs two clusters), e.g. "
            f"8,16,32; got {value!r}"
        )
    return tuple(ks)


def table_fields() -> list[str]:
    """Names of the fields the mask tables depend on."""
    return [f.name for f in dataclasses.fields(LabelConfig) if f.metadata.get("table")]


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``alps.label`` keyword overrides into config fields and generator keywords.

    Keywords that are no ``LabelConfig`` field (``pred_iou_thresh=...``, ``crop_n_layers=...``) are
    generator settings, as in the official ``SamAutomaticMaskGenerator`` signature.
    """
    names = {f.name for f in dataclasses.fields(LabelConfig)}
    fields = {k: v for k, v in overrides.items() if k in names}
    generator = {k: v for k, v in overrides.items() if k not in names}
    return fields, generator
