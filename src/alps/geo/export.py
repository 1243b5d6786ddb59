"""Temporary re-exports of the old module (remove once every caller imports the new homes).

Polygons: :mod:`alps.geo.vectors`; label GeoTIFF and overlay: :mod:`alps.geo.outputs`; COCO:
:mod:`alps.labeling.coco`.
"""

from __future__ import annotations

from alps.geo.outputs import BLOCK, DecimatedPreview, save_scene_overlay, write_label_geotiff
from alps.geo.vectors import VECTOR_BLOCK, VECTOR_FORMATS, vector_suffixes, write_label_vectors
from alps.labeling.coco import write_coco_instances

__all__ = [
    "BLOCK",
    "VECTOR_BLOCK",
    "VECTOR_FORMATS",
    "DecimatedPreview",
    "save_scene_overlay",
    "vector_suffixes",
    "write_coco_instances",
    "write_label_geotiff",
    "write_label_vectors",
]
