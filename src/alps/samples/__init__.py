"""Sample data sets, fetched from package-index distributions into one cache (``$ALPS_HOME``).

- :mod:`alps.samples.neon`: NEON aerial tiles, the georeferenced GeoTIFF and hand-drawn tree boxes
  (``deepforest`` wheel);
- :mod:`alps.samples.medical`: CT/MR volumes with lesion masks (``pyradiomics-bhklab`` sdist).
"""

from alps.samples.medical import MedicalCase, sample_volumes
from alps.samples.neon import SAMPLE_IMAGES, TreeBox, sample_geotiff, sample_images, sample_tree_boxes

__all__ = [
    "SAMPLE_IMAGES",
    "MedicalCase",
    "TreeBox",
    "sample_geotiff",
    "sample_images",
    "sample_tree_boxes",
    "sample_volumes",
]
