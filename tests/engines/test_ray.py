"""``--engine ray`` on a real local Ray instance: the same outputs as local, faults, bad inputs.

The equivalence tests run the configurations of ``tests/labeling/test_pinned_outputs.py`` (real NEON
tiles with LiteMedSAM, a GeoTIFF scene, a NIfTI volume) on the Ray engine and compare with the same
pinned hashes the local engine is held to: label maps, mask-table contents, cluster centres and the
manifest's records.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import alps
from alps.labeling.run import label
from tests.labeling.test_pinned_outputs import PINNED, alps_samples, compare_pinned, summarise
from tests.labeling.test_run import FAST, label_bytes, tiny_sam, write_images

ray = pytest.importorskip("ray") if os.environ.get("CI", "").lower() != "true" else __import__("ray")

from alps.engines.ray import RayEngine  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_session")


def pinned(name: str) -> dict[str, Any]:
    return dict(json.loads(PINNED.read_text())[name])


def assert_same(out: Path, name: str) -> None:
    differ = compare_pinned(summarise(out), pinned(name))
    assert not differ, f"{name}: {', '.join(differ)} differ from the local engine's pinned outputs"


def engine_entry(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "manifest.json").read_text())["engine"])


@pytest.fixture(scope="module")
def neon_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alps.samples.neon import SMALL_IMAGES
    from tests.conftest import require_asset

    paths = require_asset("NEON sample images", lambda: alps_samples().sample_images(names=SMALL_IMAGES))
    folder = tmp_path_factory.mktemp("neon")
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


# ------------------------------------------------------------------------------ same outputs as local


@pytest.mark.slow
def test_litemedsam_on_neon_tiles_matches_local(
    neon_folder: Path, litemedsam_checkpoint: Path, tmp_path: Path
) -> None:
    """Real weights: actors with the local engine's torch thread count give its pinned outputs."""
    import torch

    out = tmp_path / "out"
    alps.label(
        neon_folder, out, model="litemedsam", checkpoint=litemedsam_checkpoint, points_per_side=8,
        clusters=6, mode="exact", val_fraction=0.34, progress=False,
        engine=RayEngine(workers=2, threads=torch.get_num_threads()),
    )  # fmt: skip
    assert_same(out, "neon_litemedsam_exact")
    entry = engine_entry(out)
    assert entry["name"] == "ray" and entry["workers"] == 2 and entry["nodes"] == 1
    assert set(entry["timings"]) >= {"masks", "cluster", "labels"}


def test_scene_volume_images_and_a_bad_file_match_local(medical_cases: dict, tmp_path: Path) -> None:
    """A GeoTIFF scene (tiles), a NIfTI volume (slices), images and a corrupt file in one run."""
    from tests.conftest import require_asset
    from tests.labeling.test_volume_inputs import lesion_crop

    scene = require_asset("NEON GeoTIFF", lambda: alps_samples().sample_geotiff())
    inp = tmp_path / "in"
    write_images(inp, 2)
    (inp / "scene.tif").write_bytes(scene.read_bytes())
    lesion_crop(medical_cases["lung1"], inp / "lung1.nii.gz", depth=4)
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    settings = {**FAST, "clusters": 4, "tile_size": 160, "tile_overlap": 24}
    model = tiny_sam()
    local = label(inp, tmp_path / "local", model=model, **settings)
    run = label(inp, tmp_path / "ray", model=model, **settings, engine=RayEngine(workers=2))

    local_summary, ray_summary = summarise(tmp_path / "local"), summarise(tmp_path / "ray")
    for key in sorted(set(local_summary) | set(ray_summary)):
        assert ray_summary.get(key) == local_summary.get(key), f"{key} differs from the local engine's"
    kinds = {p.relative_to(tmp_path / "ray").parts[0] for p in (tmp_path / "ray").rglob("*") if p.is_file()}
    assert {"labels", "tables", "vectors"} <= kinds, kinds
    assert [v["status"] for v in ray_summary["volumes"]] == ["ok"]
    assert len(local_summary["labels"]) > 5  # images, the scene raster and volume slices
    failed = [r for r in run.images if r.status == "failed"]
    assert [r.id for r in failed] == ["broken"] and failed[0].error  # the bad file fails alone
    outcome = [(r.id, r.status, r.error) for r in run.images]
    assert outcome == [(r.id, r.status, r.error) for r in local.images]
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["counts"]["failed"] == 1


def test_clusters_auto_matches_local(neon_folder: Path, litemedsam_checkpoint: Path, tmp_path: Path) -> None:
    """``clusters="auto"``: phase B (choice of K, then the fit) runs on the driver as locally.

    The Ray run resumes a copy of the local run's tables (phase A is covered above), so this stays cheap.
    """
    import shutil

    settings = {"checkpoint": litemedsam_checkpoint, "masks": "slic", "points_per_side": 8,
                "clusters": "auto", "progress": False}  # fmt: skip
    label(neon_folder, tmp_path / "local", **settings)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    for name in ("labels", "overlays"):  # what phases B and C write is made anew
        shutil.rmtree(tmp_path / "ray" / name)
    for name in ("cluster_model.npz", "manifest.json"):
        (tmp_path / "ray" / name).unlink()
    run = label(neon_folder, tmp_path / "ray", **settings, engine=RayEngine(workers=2))
    assert all(r.resumed for r in run.images) and engine_entry(tmp_path / "ray")["name"] == "ray"
    assert label_bytes(tmp_path / "ray") == label_bytes(tmp_path / "local")
    assert summarise(tmp_path / "ray") == summarise(tmp_path / "local")
    choices = [json.loads((tmp_path / n / "manifest.json").read_text())["cluster_choice"]
               for n in ("local", "ray")]  # fmt: skip
    assert choices[0] == choices[1] and choices[0]["k"] == run.clusters


# ------------------------------------------------------------------------------------ faults, inputs


def mask_actor_pids() -> list[int]:
    """This session's phase-A actors: processes below this one titled ``ray::...MaskWorker``."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            titles[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sorted(pid for pid, title in titles.items() if "MaskWorker" in title and ours(pid))


def test_killed_worker_is_retried_and_outputs_match(tmp_path: Path) -> None:
    """SIGKILL one phase-A actor after the first table: Ray restarts it, the run ends as local's."""
    write_images(tmp_path / "in", 16)
    model = tiny_sam()
    settings = {**FAST, "masks": "sam", "points_per_side": 8}
    local = label(tmp_path / "in", tmp_path / "local", model=model, **settings)
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = mask_actor_pids() if list((tmp_path / "ray" / "tables").glob("*.parquet")) else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    run = label(tmp_path / "in", tmp_path / "ray", model=model, **settings,
                engine=RayEngine(workers=2, batch_size=1))  # fmt: skip
    killer.join(timeout=5)
    assert killed, "no actor was killed (the run finished first)"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert len(run.ok) == len(local.ok) == 16
    assert label_bytes(tmp_path / "ray") == label_bytes(tmp_path / "local")
    local_summary, ray_summary = summarise(tmp_path / "local"), summarise(tmp_path / "ray")
    assert ray_summary["tables"] == local_summary["tables"]
    assert ray_summary["centres"] == local_summary["centres"]


def test_resume_with_the_other_engine_redoes_nothing(tmp_path: Path) -> None:
    """Tables are the artifact between phases: a run made locally is resumed by Ray without redoing."""
    write_images(tmp_path / "in", 3)
    model = tiny_sam()
    label(tmp_path / "in", tmp_path / "out", model=model, **FAST)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "state").glob("*.json")}
    labels = label_bytes(tmp_path / "out")
    run = label(tmp_path / "in", tmp_path / "out", model=model, **FAST, engine=RayEngine(workers=1))
    assert all(r.resumed for r in run.images)
    assert len(before) == 3 and {p: p.stat().st_mtime_ns for p in before} == before
    assert "masks" not in engine_entry(tmp_path / "out")["timings"]  # phase A had nothing to do
    assert label_bytes(tmp_path / "out") == labels


# -------------------------------------------------------------------------------------- small parts


def test_gpu_workers_need_a_cuda_device(tmp_path: Path) -> None:
    write_images(tmp_path / "in", 1)
    with pytest.raises(ValueError, match="needs --device cuda"):
        label(tmp_path / "in", tmp_path / "out", model=tiny_sam(), **FAST,
              engine=RayEngine(gpus_per_worker=1))  # fmt: skip
