"""Throughput of ``alps label`` on the local engine vs the Ray engine with 1 and 2 workers.

Every configuration labels the same images (crops of the real NEON tiles, each a different crop
and rotation) with the real LiteMedSAM weights on a small prompt grid, in a fresh child process,
so that its peak RSS is the driver's alone. Reported per run: wall time, images per second over
the whole run and in steady state (between the first and the last finished unit of phase A,
i.e. after the actors have started), Ray's connection start-up, phase B's share of the run, peak
driver RSS, and peak object-store use sampled during the run. Ray runs connect to one local Ray
instance started by the benchmark (``ray start --head``; stopped at the end by SIGTERM).

    PYTHONPATH=src python benchmarks/engine_scaling.py [--images 16] [--rss-images 64]

JSON on stdout and in ``benchmarks/results/engine_scaling.json``. The machine may be shared: the
load average is recorded before and after; treat the numbers as noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import emit, machine_info

RESULTS = Path(__file__).with_name("results") / "engine_scaling.json"
SETTINGS = {"points_per_side": 4, "clusters": 6, "progress": False}


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` 352 x 352 crops of the three small NEON tiles, shifted and rotated so that each differs."""
    import numpy as np
    from PIL import Image

    from alps.samples.neon import SMALL_IMAGES, sample_images

    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sample_images(names=SMALL_IMAGES)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        tile = tiles[i % len(tiles)]
        dy, dx = (i * 7) % 48, (i * 13) % 48
        crop = np.rot90(tile[dy : dy + 352, dx : dx + 352], k=(i // len(tiles)) % 4)
        path = folder / f"tile_{i:03d}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(path)
        paths.append(path)
    return paths


def object_store_sampler(address: str, peak: list[float], stop: threading.Event) -> None:
    """Poll the cluster's plasma usage (MiB) into ``peak[0]`` until ``stop``."""
    import re

    from ray._private.internal_api import memory_summary

    while not stop.wait(0.5):
        try:
            text = memory_summary(address, stats_only=True)
        except Exception:  # the summary is best effort; the run matters
            continue
        found = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", text)
        if found:
            peak[0] = max(peak[0], float(found.group(1)))


def one_run(images: Path, out: Path, engine: str, workers: int, address: str | None) -> dict[str, Any]:
    """Label ``images`` once (in this process) and measure it."""
    import torch
    from threadpoolctl import threadpool_limits

    import alps
    from alps.sam.weights import fetch_weights

    torch.set_num_threads(1)  # local and each Ray worker use one thread (torch and BLAS): fair, same outputs
    threadpool_limits(limits=1)
    arrivals: list[float] = []
    runner: Any = "local"
    start = time.perf_counter()
    startup = 0.0
    stop, peak = threading.Event(), [0.0]
    if engine == "ray":
        from alps.engines.ray import RayEngine

        runner = RayEngine(address=address, workers=workers, cpus_per_worker=1)
        runner.connect()
        startup = time.perf_counter() - start
        threading.Thread(target=object_store_sampler, args=(address, peak, stop), daemon=True).start()
    else:
        from alps.engines.local import LocalEngine

        runner = LocalEngine()
    process = runner.process

    def timed(*args: Any, **kwargs: Any) -> Any:
        for result in process(*args, **kwargs):
            arrivals.append(time.perf_counter())
            yield result

    runner.process = timed
    run = alps.label(images, out, model="litemedsam", checkpoint=fetch_weights("litemedsam"), **SETTINGS,
                     engine=runner)  # fmt: skip
    wall = time.perf_counter() - start
    stop.set()
    n = len(run.ok)
    steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 2 else None
    cluster_s = float(run.timings.get("cluster", 0.0))
    return {
        "engine": engine,
        "workers": workers,
        "images": n,
        "wall_s": round(wall, 2),
        "images_per_s": round(n / wall, 3),
        "steady_images_per_s": round(steady, 3) if steady else None,
        "ray_connect_s": round(startup, 2),
        "first_unit_s": round(arrivals[0] - start, 2) if arrivals else None,
        "phase_b_s": cluster_s,
        "phase_b_share": round(cluster_s / wall, 3),
        "timings": run.timings,
        "peak_driver_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_object_store_mib": peak[0] if engine == "ray" else None,
    }


ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the benchmark's own cluster, on 127.0.0.1


def child(images: Path, engine: str, workers: int, address: str | None) -> dict[str, Any]:
    """``one_run`` in a fresh process: its RSS is this configuration's alone (also logged to stderr)."""
    out = Path(tempfile.mkdtemp(prefix="alps-bench-")) / "out"
    cmd = [sys.executable, __file__, "--child", str(images), str(out), engine, str(workers), address or ""]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, env=ENV)
        if done.returncode != 0:
            raise RuntimeError(f"{engine} x{workers} failed: {done.stderr[-2000:]}")
        result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(result), file=sys.stderr, flush=True)  # a long run keeps what it measured
        return result
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def start_ray() -> tuple[subprocess.Popen[bytes], str, float]:
    """A local two-CPU Ray head (``ray start --block``), its address, and how long it took to come up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    ray = str(Path(sys.executable).with_name("ray"))
    start = time.perf_counter()
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    while subprocess.run([ray, "status", "--address", address], capture_output=True, env=ENV).returncode != 0:
        time.sleep(1)
    return head, address, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rss-images", type=int, default=64)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        images, out, engine, workers, address = args.child
        print(json.dumps(one_run(Path(images), Path(out), engine, int(workers), address or None)))
        return
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="alps-bench-images-"))
    small, large = root / "small", root / "large"
    make_images(small, args.images)
    make_images(large, args.rss_images)
    head, address, cluster_start = start_ray()
    try:
        runs = [
            child(small, "local", 1, None),
            child(small, "ray", 1, address),
            child(small, "ray", 2, address),
        ]
        rss = [child(large, "ray", 2, address)]
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(root, ignore_errors=True)
    local, ray2 = runs[0], runs[2]
    report = {
        "benchmark": "engine_scaling",
        "machine": machine_info(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "note": "shared machine: numbers are noisy",
        "settings": {**SETTINGS, "model": "litemedsam", "image_side": 352, "torch_threads_per_process": 1},
        "ray_cluster_start_s": round(cluster_start, 2),
        "runs": runs,
        "driver_rss_mib": {
            f"{args.images} images": ray2["peak_driver_rss_mib"],
            f"{args.rss_images} images": rss[0]["peak_driver_rss_mib"],
        },
        "rss_run": rss[0],
        "ray2_vs_local_steady": round(ray2["steady_images_per_s"] / local["steady_images_per_s"], 3),
    }
    emit(report, RESULTS)


if __name__ == "__main__":
    main()
