"""Peak RSS and seconds per megapixel of ``alps label`` on large 3-band uint16 GeoTIFF scenes.

Scenes are built from the real NEON GeoTIFF (deepforest ``OSBS_029.tif``) mirrored into a grid and
scaled to uint16, written tiled + deflate block by block (never held whole). Each size runs in a
fresh process so its peak RSS is its own. Defaults: 5k, 10k and 20k px squares, LiteMedSAM with
random weights, ``--mode fast``, a 4x4 prompt grid (the memory path, not label quality).

    python benchmarks/scene_memory.py --sizes 2000 5000 10000 20000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build_scene(path: Path, size: int) -> Path:
    import rasterio

    from alps.data import sample_geotiff

    if path.exists():
        return path
    with rasterio.open(sample_geotiff()) as src:
        base, profile = src.read().astype(np.uint16) * 64 + 50, src.profile
    th, tw = base.shape[1:]
    profile.update(
        height=size, width=size, dtype="uint16", nodata=None, tiled=True, blockxsize=512, blockysize=512,
        compress="deflate", BIGTIFF="IF_SAFER",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, size, 2048):
            for x0 in range(0, size, 2048):
                h, w = min(2048, size - y0), min(2048, size - x0)
                ys, xs = np.arange(y0, y0 + h), np.arange(x0, x0 + w)
                # mirror the source tile at every repeat so the scene has no hard edges
                iy = np.where((ys // th) % 2 == 0, ys % th, th - 1 - ys % th)
                ix = np.where((xs // tw) % 2 == 0, xs % tw, tw - 1 - xs % tw)
                block = base[:, iy][:, :, ix]
                dst.write(block, window=rasterio.windows.Window(x0, y0, w, h))
    tmp.rename(path)
    return path


def run_one(scene: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    from alps.pipeline import label

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
        "status_ok": float(rec.status == "ok"),
        "seconds": round(seconds, 2),
        "seconds_per_megapixel": round(seconds / mpx, 3) if mpx else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--work", type=Path, default=Path("bench-scenes"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-size", type=int, default=None)
    parser.add_argument("--points-per-side", type=int, default=4)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.one is not None:
        scene = build_scene(args.work / f"scene_{args.one}.tif", args.one)
        print(json.dumps(run_one(scene, args.work / f"out_{args.one}", args)))
        return
    results = []
    for size in args.sizes:
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
        cmd += ["--points-per-side", str(args.points_per_side)]
        if args.tile_size:
            cmd += ["--tile-size", str(args.tile_size)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(line))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
