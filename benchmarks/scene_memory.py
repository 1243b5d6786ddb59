"""Peak RSS and seconds per megapixel of ``alps label`` on large 3-band uint16 GeoTIFF scenes.

Scenes are a mosaic of the real NEON sample tiles (deepforest ``OSBS_029``, ``SOAP_031``,
``SOAP_061``; 400 x 400 px each, every other repeat mirrored), scaled to uint16 and georeferenced
like ``OSBS_029.tif``. They are written tiled + deflate one strip of blocks at a time (never held
whole) by this process; each size is then labelled in a fresh child process so its peak RSS
(``getrusage`` of the child) is the labelling's own. Defaults: 5k, 10k and 20k px squares,
LiteMedSAM with random weights, ``--mode fast``, a 4x4 prompt grid, 512-px tiles (the memory
path, not label quality). Prints one JSON report and writes it to
``benchmarks/results/scene_memory.json``.

    python benchmarks/scene_memory.py                       # 5000 10000 20000
    python benchmarks/scene_memory.py --sizes 1500 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "scene_memory.json"
STRIP = 1024  # rows written per step while building a scene


def _mosaic_sources() -> tuple[list[np.ndarray], dict[str, Any]]:
    """The NEON RGB tiles as ``(3, 400, 400)`` uint16 and the profile of the GeoTIFF sample."""
    import rasterio
    from PIL import Image

    from alps.samples.neon import sample_geotiff, sample_images

    with rasterio.open(sample_geotiff()) as src:
        profile = dict(src.profile)
    tiles = []
    for path in sample_images():  # the three 400-px tiles (the large YELL crop is not included)
        rgb = np.asarray(Image.open(path).convert("RGB"))[:400, :400]
        if rgb.shape[:2] == (400, 400):
            tiles.append(np.moveaxis(rgb, -1, 0).astype(np.uint16) * 64 + 50)
    return tiles, profile


def build_scene(path: Path, size: int) -> Path:
    """A ``size`` x ``size`` uint16 3-band GeoTIFF mosaic of real tiles, written strip by strip."""
    import rasterio
    from rasterio.windows import Window

    if path.exists():
        return path
    tiles, profile = _mosaic_sources()
    side = tiles[0].shape[1]
    profile.update(
        driver="GTiff", height=size, width=size, count=3, dtype="uint16", nodata=None, tiled=True,
        blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    cols = np.arange(size)
    ix = np.where((cols // side) % 2 == 0, cols % side, side - 1 - cols % side)  # mirrored repeats
    with rasterio.Env(GDAL_CACHEMAX=64 << 20), rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, size, STRIP):
            rows = np.arange(y0, min(y0 + STRIP, size))
            iy = np.where((rows // side) % 2 == 0, rows % side, side - 1 - rows % side)
            strip = np.empty((3, rows.size, size), np.uint16)
            for j in range(0, size, side):  # which real tile fills each 400-px cell of the strip
                for r in np.unique(rows // side):
                    sel = rows // side == r
                    tile = tiles[int(r + j // side) % len(tiles)]
                    strip[:, sel, j : j + side] = tile[:, iy[sel]][:, :, ix[j : j + side]]
            dst.write(strip, window=Window(0, y0, size, rows.size))
    tmp.rename(path)
    return path


def run_one(scene: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from alps.labeling.run import label

    start = time.perf_counter()
    run = label(
        scene, out, model="litemedsam", checkpoint="random", clusters=8, points_per_side=args.points_per_side,
        mode="fast", device=args.device, tile_size=args.tile_size, progress=False, force=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    rec = run.images[0]
    mpx = (rec.height or 0) * (rec.width or 0) / 1e6
    return {
        "size": rec.width or 0,
        "megapixels": round(mpx, 2),
        "tiles": rec.tiles or 0,
        "status": rec.status,
        "seconds": round(seconds, 2),
        "seconds_per_megapixel": round(seconds / mpx, 3) if mpx else None,
        "seconds_per_tile": rec.seconds.get("per_tile"),
        "stage_seconds": run.timings,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--work", type=Path, default=Path("bench-scenes"), help="scenes and runs go here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--points-per-side", type=int, default=4)
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="JSON report (default: benchmarks/results/)"
    )
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one is not None:
        scene = args.work / f"scene_{args.one}.tif"
        print(json.dumps(run_one(scene, args.work / f"out_{args.one}", args)))
        return
    import torch

    results = []
    for size in args.sizes:
        start = time.perf_counter()
        build_scene(args.work / f"scene_{size}.tif", size)
        built = round(time.perf_counter() - start, 1)
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(size),
            "--work",
            str(args.work),
            "--device",
            args.device,
        ]
        cmd += ["--points-per-side", str(args.points_per_side), "--tile-size", str(args.tile_size)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "build_seconds": built})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "benchmark": "scene_memory",
        "what": "alps label on N x N 3-band uint16 GeoTIFF mosaics of real NEON tiles; peak RSS of the "
        "labelling process (getrusage), wall seconds per megapixel",
        "settings": {
            "model": "litemedsam (random weights)",
            "mode": "fast",
            "points_per_side": args.points_per_side,
            "tile_size": args.tile_size,
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
    }
    text = json.dumps(report, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
