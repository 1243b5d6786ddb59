"""ViT encoder forward: the official module vs exact mode's (bit-identical) vs fast mode's (fused attention).

Seeded random ViT-B (the weights do not change the compute) on the held-out ``crop512`` of
``amg_speed.py``, resized and padded to 1024 px as SAM does; the three forwards interleaved
``--repeats`` times, glibc malloc tuned as ``alps label`` runs. Checks that exact mode's embedding is
``torch.equal`` to the module's. Prints one JSON document.

    python benchmarks/encoder_speed.py --repeats 3 --out encoder_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from segment_anything.utils.transforms import ResizeLongestSide

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine_info
from alps.core.runtime import keep_freed_memory
from alps.sam.vit_fast import vit_forward, vit_forward_exact
from amg_speed import build_model, matmul_peak_gflops, sample_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = keep_freed_memory()
    model = build_model(args.model).eval()
    encoder = model.image_encoder
    image = sample_image("crop512")
    x = torch.as_tensor(ResizeLongestSide(encoder.img_size).apply_image(image)).permute(2, 0, 1)[None]
    pixels = model.preprocess(x.contiguous())
    forwards = {
        "official": encoder,
        "exact": lambda p: vit_forward_exact(encoder, p),
        "fast": lambda p: vit_forward(encoder, p),
    }
    seconds: dict[str, list[float]] = {name: [] for name in forwards}
    identical = True
    with torch.no_grad():
        for _ in range(args.repeats):
            outs = {}
            for name, forward in forwards.items():
                start = time.perf_counter()
                outs[name] = forward(pixels)
                seconds[name].append(round(time.perf_counter() - start, 2))
            identical &= bool(torch.equal(outs["official"], outs["exact"]))
    median = {name: statistics.median(v) for name, v in seconds.items()}
    report: dict[str, Any] = {
        "benchmark": "encoder_speed",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {**machine_info(), "threads": args.threads, "malloc_tuned": tuned},
        "matmul_peak_gflops_fp32": round(matmul_peak_gflops(), 1),
        "model": f"{args.model}, seeded random weights, 1024 px input",
        "seconds": seconds,
        "median_s": median,
        "speedup_vs_official": {
            name: round(median["official"] / median[name], 2) for name in ("exact", "fast")
        },
        "exact_equals_official": identical,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
