"""Where `alps label` spends its time, stage by stage, in the survivors setting (thresholds 0).

Prints one JSON document. One image (the held-out 512x512 ``crop512`` of ``amg_speed.py``, or any NEON
tile) is labelled with ``alps.labeling.run.label`` in exact and in fast mode, with a seeded random ViT-B
encoder + the real SAM ViT-H prompt encoder / mask decoder (as in ``amg_speed.py``), under
``cProfile``. Every stage is the cumulative time of the functions that implement it:

=================  ====================================================================================
encoder            the image encoder incl. its preprocessing (``MaskGenerator._embed``)
decoder            the two-way transformer for all prompts (``decoder.decode_tokens``, in fast mode
                   ``lowrank.decode_tokens_lowrank``) + prompt encoding
upscaling          the decoder's output upscaling + hypernetwork products (``upscale_masks[_gemm]``)
post-processing    exact: the two resizes to the crop (``SamResize.logits``), stability, boxes, crop-edge
                   test; fast: the same on the low-res logits (``_filter_low_res``) and the final
                   upsampling of NMS survivors (``_upsample_survivors`` less its RLE encoding)
RLE                ``masks_to_rles`` (mask -> COCO RLE)
NMS                ``torchvision batched_nms``
features           pooling the embedding in each mask (``mask_features``)
k-means            ``fit_clusters`` + ``assign_clusters``
painting           ``paint_items`` (label maps written)
other              everything else of the run (reading, tables, manifest, ...)
=================  ====================================================================================

The decoder runs with ``decoder_workers=1`` so that all of its work is on the profiled thread (torch's
intra-op threads still apply; ``cProfile`` adds a few percent of overhead). Shares are of the profiled
total. With a random encoder the masks are speckle (see README), so fast mode keeps few of them after
NMS; the share of post-processing is what real weights would see only for the candidates before NMS.

    python benchmarks/label_stages.py --out label_stages.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from alps.labeling.run import label

sys.path.insert(0, str(Path(__file__).parent))
from amg_speed import IMAGES, build_model, sample_image

# stage -> (file suffix, function name) pairs whose cumulative times add up to it
STAGES: dict[str, list[tuple[str, str]]] = {
    "encoder": [("alps/sam/generator.py", "_embed")],
    "decoder": [
        ("alps/sam/decoder.py", "decode_tokens"),
        ("alps/sam/lowrank.py", "decode_tokens_lowrank"),
        ("alps/sam/generator.py", "_encode_prompts"),
    ],
    "upscaling": [("alps/sam/decoder.py", "upscale_masks"), ("alps/sam/decoder.py", "upscale_masks_gemm")],
    "post-processing": [
        ("alps/sam/decoder.py", "logits"),
        ("segment_anything/utils/amg.py", "calculate_stability_score"),
        ("segment_anything/utils/amg.py", "batched_mask_to_box"),
        ("alps/sam/generator.py", "mask_boxes"),
        ("segment_anything/utils/amg.py", "is_box_near_crop_edge"),
        ("alps/sam/generator.py", "_filter_low_res"),
        ("alps/sam/generator.py", "_upsample_survivors"),
        ("alps/sam/generator.py", "mask_areas"),
    ],
    "RLE": [("alps/sam/generator.py", "masks_to_rles")],
    "NMS": [("torchvision/ops/boxes.py", "batched_nms")],
    "features": [("alps/labeling/features.py", "mask_features")],
    "k-means": [
        ("alps/labeling/cluster.py", "fit_clusters"),
        ("alps/labeling/cluster.py", "assign_clusters"),
    ],
    "painting": [("alps/labeling/run.py", "paint_items")],
}


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of every function ``name`` defined in a file ending in ``suffix``, counting
    only its outermost calls (recursive/nested calls of the same function are in its own cumtime)."""
    total = 0.0
    for (filename, _line, func), (_cc, _nc, _tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and filename.endswith(suffix):
            # exclude time already counted through a caller that is the same function
            total += ct - sum(v[3] for k, v in callers.items() if k[2] == name and k[0].endswith(suffix))
    return total


def stage_seconds(stats: pstats.Stats, total: float) -> dict[str, float]:
    out = {stage: sum(_cumulative(stats, s, f) for s, f in funcs) for stage, funcs in STAGES.items()}
    # the post-processing functions contain the RLE encoding of fast mode's survivors: count it once
    rle_in_upsample = 0.0
    for (filename, _l, func), (_cc, _nc, _tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == "masks_to_rles" and filename.endswith("alps/sam/generator.py"):
            rle_in_upsample += sum(v[3] for k, v in callers.items() if k[2] == "_upsample_survivors")
    out["post-processing"] -= rle_in_upsample
    out["other"] = total - sum(out.values())
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = build_model("vit_b")
    report: dict[str, Any] = {
        "benchmark": "label_stages",
        "command": "label_stages.py " + " ".join(sys.argv[1:]),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "model": "vit_b: seeded random encoder + real SAM ViT-H prompt encoder/mask decoder",
        "settings": {
            "points_per_side": args.grid,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "clusters": args.clusters,
            "decoder_workers": 1,
            "image": args.image,
        },
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="label_stages_") as tmp:
        src = Path(tmp) / "images"
        src.mkdir()
        Image.fromarray(sample_image(args.image)).save(src / f"{args.image.removesuffix('.png')}.png")
        for mode in args.modes:
            prof = cProfile.Profile()
            start = time.perf_counter()
            prof.enable()
            label(
                src,
                Path(tmp) / f"out_{mode}",
                model=model,
                mode=mode,
                points_per_side=args.grid,
                clusters=args.clusters,
                pred_iou_thresh=0.0,
                stability_score_thresh=0.0,
                decoder_workers=1,
                progress=False,
            )
            prof.disable()
            wall = time.perf_counter() - start
            stats = pstats.Stats(prof)
            total = max(v[3] for v in stats.stats.values())  # type: ignore[attr-defined]
            seconds = stage_seconds(stats, total)
            manifest = json.loads((Path(tmp) / f"out_{mode}" / "manifest.json").read_text(encoding="utf-8"))
            report["modes"][mode] = {
                "wall_s": round(wall, 2),
                "profiled_s": round(total, 2),
                "masks": manifest["counts"]["masks"],
                "stage_s": {k: round(v, 2) for k, v in seconds.items()},
                "stage_share": {k: round(v / total, 3) for k, v in seconds.items()},
                "over_10_percent_besides_encoder_decoder": sorted(
                    k for k, v in seconds.items() if k not in ("encoder", "decoder") and v / total > 0.10
                ),
            }
            print(json.dumps({mode: report["modes"][mode]}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="crop512", choices=IMAGES)
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=46)
    parser.add_argument("--modes", nargs="+", default=["exact", "fast"], choices=["exact", "fast"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = json.dumps(run(args), indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
