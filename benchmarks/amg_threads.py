"""exact and fast mask generation at 1 and 2 torch threads (and decoder worker layouts), interleaved.

Prints one JSON document: median seconds per image for each (mode, threads, decoder_workers) on the
held-out ``crop512`` of ``amg_speed.py`` (seeded random ViT-B encoder + real SAM decoder), survivors
setting by default. On CPU, ``MaskGenerator`` decodes prompt batches on ``decoder_workers`` threads,
each running single-threaded ops (default: as many as torch's threads, at most 4).

    python benchmarks/amg_threads.py --grid 16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from alps.core.runtime import keep_freed_memory
from alps.sam import MaskGenerator

sys.path.insert(0, str(Path(__file__).parent))
from amg_speed import SETTINGS, build_model, sample_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--setting", default="survivors", choices=list(SETTINGS))
    parser.add_argument("--layouts", nargs="+", default=["1x1", "2x1", "2x2"], help="THREADSxDECODER_WORKERS")
    args = parser.parse_args()
    keep_freed_memory()
    model, image = build_model("vit_b"), sample_image("crop512")
    layouts = [tuple(int(v) for v in s.split("x")) for s in args.layouts]
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for mode in ("exact", "fast"):
            for threads, workers in layouts:
                torch.set_num_threads(threads)
                gen = MaskGenerator(
                    model,
                    points_per_side=args.grid,
                    mode=mode,
                    decoder_workers=workers,
                    output_mode="coco_rle",
                    **SETTINGS[args.setting],
                )
                t = time.perf_counter()
                gen.generate(image)
                times.setdefault(f"{mode} threads={threads} workers={workers}", []).append(
                    round(time.perf_counter() - t, 2)
                )
    report: dict[str, Any] = {
        "benchmark": "amg_threads",
        "grid": args.grid,
        "setting": args.setting,
        "cpu_count": os.cpu_count(),
        "seconds": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
