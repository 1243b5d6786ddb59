"""`alps report` in a real headless Chromium (Playwright), from the file system, on a real run.

Chromium is the Debian package (``/usr/bin/chromium``), driven by Playwright from PyPI (the `test`
extra); no browser download. Missing either: the test skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alps.cli import main
from alps.labeling.paint import label_value_to_cluster, load_label_png
from alps.review.mapping import apply_mapping, load_mapping
from tests.review.conftest import artifacts_dir, missing


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        missing("chromium is not installed (apt-get install -y chromium)")
    return str(path)


@pytest.fixture(scope="module")
def report(labelled_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(labelled_run), "--out", str(out)]) == 0
    return out / "index.html"


def test_report_files_are_self_contained(report: Path, labelled_run: Path) -> None:
    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # no CDN, no network
    k = json.loads((labelled_run / "manifest.json").read_text())["num_classes"]
    assert all(f'id="cluster-{c}"' in page for c in range(k))
    thumbs = list((report.parent / "crops").glob("*.jpg")) + list((report.parent / "thumbs").rglob("*.jpg"))
    assert thumbs and all(p.stat().st_size < 200_000 for p in thumbs)
    assert report.stat().st_size < 500_000  # thumbnails are files, not inline blobs


ODD_NAME = 'sol: "nu" é #1'  # YAML-special characters survive the page's YAML


def expected_classes(
    k: int, renamed: int, merged: int, ignored: int, odd: int
) -> tuple[dict[str, list[int]], list[int]]:
    """What the page must download: merged joins renamed, every other cluster its own class."""
    names = {renamed: "tree crown", odd: ODD_NAME}
    classes: dict[str, list[int]] = {}
    for c in range(k):
        if c == ignored:
            continue
        root = renamed if c in (renamed, merged) else c
        classes.setdefault(names.get(root, f"cluster_{root}"), []).append(c)
    return classes, [ignored]


def test_report_in_chromium_rename_merge_download_and_map(
    report: Path, labelled_run: Path, tmp_path: Path
) -> None:
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    manifest = json.loads((labelled_run / "manifest.json").read_text())
    k = int(manifest["num_classes"])
    order = sorted(range(k), key=lambda c: (-manifest["class_pixels"][c], c))
    renamed, merged, odd, ignored = order[0], order[1], order[2], order[-1]
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        sections = page.locator("article.cluster")
        assert sections.count() == k
        for c in range(k):
            section = page.locator(f"#cluster-{c}")
            section.scroll_into_view_if_needed()
            page.wait_for_function(
                "el => [...el.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)",
                arg=section.element_handle(), timeout=10_000,
            )  # fmt: skip
        page.fill(f'input.name[data-cluster="{renamed}"]', "tree crown")
        page.fill(f'input.name[data-cluster="{odd}"]', ODD_NAME)
        page.focus(f'select.merge[data-cluster="{merged}"]')  # a user opens the selector first
        page.select_option(f'select.merge[data-cluster="{merged}"]', str(renamed))
        page.check(f'input.ignore[data-cluster="{ignored}"]')
        assert "tree crown" in page.locator("#mapping-preview").inner_text()
        page.reload()  # the state lives in localStorage
        assert page.input_value(f'input.name[data-cluster="{renamed}"]') == "tree crown"
        assert page.input_value(f'select.merge[data-cluster="{merged}"]') == str(renamed)
        with page.expect_download() as download:
            page.click("#dl-yaml")
        saved = tmp_path / "mapping.yaml"
        download.value.save_as(saved)
        with page.expect_download() as download_json:
            page.click("#dl-json")
        download_json.value.save_as(tmp_path / "mapping.json")
        page.locator(f"#cluster-{renamed}").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert errors == []
    store = artifacts_dir()
    if store is not None:
        shutil.copy(shot, store / "report.png")
    classes, ignore = expected_classes(k, renamed, merged, ignored, odd)
    mapping = load_mapping(saved, k)
    assert {n: list(ids) for n, ids in mapping.classes} == classes and list(mapping.ignore) == ignore
    assert load_mapping(tmp_path / "mapping.json", k) == mapping
    check_mapped_equals_numpy_remap(labelled_run, saved, tmp_path / "mapped", mapping.cluster_to_class(k))


def check_mapped_equals_numpy_remap(run: Path, mapping: Path, out: Path, c2c: Any) -> None:
    assert main(["map", str(run), "--mapping", str(mapping), "--out", str(out)]) == 0
    labels = sorted((run / "labels").rglob("*.png"))
    assert labels
    for path in labels:
        clusters = label_value_to_cluster(load_label_png(path))
        expected = np.where(clusters >= 0, np.asarray(c2c)[clusters.clip(0)], -1)
        mapped = load_label_png(out / path.relative_to(run))
        np.testing.assert_array_equal(label_value_to_cluster(mapped), expected)
    again = apply_mapping(run, mapping, out)  # idempotent on a real run too
    assert again.label_files == len(labels)
