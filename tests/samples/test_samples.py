"""Sample data: box parsers offline, the real deepforest images when the package index is reachable."""

from __future__ import annotations

from pathlib import Path

import pytest

from alps.core.images import read_image
from alps.samples.neon import (
    SAMPLE_IMAGES,
    TreeBox,
    parse_csv_boxes,
    parse_voc_boxes,
    sample_images,
    sample_tree_boxes,
)

VOC = """<annotation><filename>x.png</filename>
<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
<object><name>Dead</name><bndbox><xmin>5.0</xmin><ymin>6</ymin><xmax>7</xmax><ymax>8</ymax></bndbox></object>
<object><name>NoBox</name></object>
</annotation>"""


def test_parse_voc_boxes(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(VOC)
    assert parse_voc_boxes(tmp_path / "a.xml") == [TreeBox(1, 2, 30, 40, "Tree"), TreeBox(5, 6, 7, 8, "Dead")]


def test_parse_csv_boxes(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(
        "image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,3,4,Tree\nb.png,5,6,7,8,Alive\na.png,0,0,9,9,Tree\n"
    )
    boxes = parse_csv_boxes(tmp_path / "a.csv")
    assert boxes == {
        "a.png": [TreeBox(1, 2, 3, 4, "Tree"), TreeBox(0, 0, 9, 9, "Tree")],
        "b.png": [TreeBox(5, 6, 7, 8, "Alive")],
    }


def test_unknown_sample_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sample"):
        sample_images(tmp_path, names=["nope.png"])


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    from tests.conftest import require_asset

    return require_asset("the deepforest wheel", sample_images)


def test_sample_images_are_real_neon_tiles(samples: list[Path]) -> None:
    assert [p.name for p in samples] == [*SAMPLE_IMAGES[:4]]
    shapes = [read_image(p).shape for p in samples]
    assert shapes == [(400, 400, 3), (400, 400, 3), (400, 400, 3), (1035, 1249, 3)]
    # a second call re-uses the cache (same files, nothing re-extracted)
    mtimes = [p.stat().st_mtime_ns for p in samples]
    assert [p.stat().st_mtime_ns for p in sample_images()] == mtimes


def test_sample_images_into_dest(samples: list[Path], tmp_path: Path) -> None:
    (path,) = sample_images(tmp_path, names=["SOAP_061.png"])
    assert path == tmp_path / "SOAP_061.png"
    assert path.read_bytes() == (samples[2]).read_bytes()


def test_sample_tree_boxes(samples: list[Path]) -> None:
    boxes = sample_tree_boxes()
    assert len(boxes["OSBS_029.png"]) == 61
    assert len(boxes["SOAP_061.png"]) == 37
    assert {b.label for b in boxes["SOAP_061.png"]} <= {"Dead", "Alive"}
    assert "SOAP_031.png" not in boxes
    for box in boxes["OSBS_029.png"]:
        assert 0 <= box.xmin < box.xmax <= 400 and 0 <= box.ymin < box.ymax <= 400


def test_read_nrrd_gives_the_voxels_and_ras_affine_of_the_nifti(medical_cases: dict) -> None:
    import nibabel as nib
    import numpy as np

    from alps.samples.medical import read_nrrd

    case = medical_cases["breast1"]
    nrrd = case.image.parent / "nrrd" / "breast1_image.nrrd"
    if not nrrd.is_file():
        pytest.skip(f"{nrrd} was not kept next to the converted volumes")
    voxels, affine = read_nrrd(nrrd)
    stored = nib.load(case.image)
    assert voxels.shape == (45, 120, 21) and voxels.dtype == np.int16 and voxels.flags.c_contiguous
    assert np.array_equal(voxels, np.asanyarray(stored.dataobj))
    assert np.allclose(affine, stored.affine)
    # 0.66 x 0.66 x 2.1 mm voxels; LPS -> RAS negates x and y
    assert np.allclose(np.diag(affine)[:3], [-0.664062, -0.664062, 2.1])


def test_read_nrrd_bad_file_is_one_line_error(tmp_path: Path) -> None:
    from alps.samples.medical import read_nrrd

    bad = tmp_path / "bad.nrrd"
    bad.write_text("not an nrrd header\n\n")
    with pytest.raises(ValueError, match=r"bad\.nrrd: not a readable NRRD file"):
        read_nrrd(bad)


def test_tree_images_pair_images_with_boxes_and_rasterize(samples: list[Path]) -> None:
    import numpy as np

    from alps.samples.neon import rasterize_boxes, tree_images

    found = {t.id: t for t in tree_images(["OSBS_029", "SOAP_031"])}
    assert found["SOAP_031"].boxes is None and found["OSBS_029"].image.name == "OSBS_029.png"
    boxes = found["OSBS_029"].boxes
    assert boxes is not None and len(boxes) > 10
    mask = rasterize_boxes(boxes, (400, 400))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    first = boxes[0]
    assert mask[first.ymin, first.xmin] == 1 and mask[first.ymin : first.ymax, first.xmin : first.xmax].all()
    assert rasterize_boxes([TreeBox(-5, 390, 3, 420, "Tree")], (400, 400)).sum() == 3 * 10  # clipped
    with pytest.raises(ValueError, match="unknown sample image"):
        tree_images(["nope"])
