"""Fast mode's recall of exact mode's masks with the image encoder in bfloat16 and everything after it
in float32: can the encoder, ~40 % of fast mode's time, run in bfloat16 within the 95 % recall floor?

Real weights are needed for a recall that means anything, so this runs LiteMedSAM (TinyViT, box
prompts, 32x32 box grid, default thresholds) on the NEON tiles of ``amg_speed.py``. Variants of the
encoder (the decoder is float32 and factored, as in fast mode; the precision ``"mixed"`` upscaling is
not used here):

* ``fp32``: fast mode as shipped;
* ``bf16_weights``: a bfloat16 copy of the encoder (weights and activations bfloat16);
* ``autocast``: the float32 encoder under CPU autocast (products in bfloat16, norms and softmax in
  float32);
* ``mlp_autocast``: autocast only inside the encoder's MLP blocks (two thirds of a ViT block's
  multiply-adds), the attention and everything else float32.

Recall = share of exact mode's masks (>= 50 px) that the variant finds with IoU >= 0.8; ``precision``
is the converse (the variant's masks >= 50 px that exact mode has). The seconds of LiteMedSAM's runs
are those of a 256-px TinyViT, where the encoder is cheap; ``--vit-b-repeats N`` also times the ViT-B
encoder (seeded random weights, 1024 px, fast mode's forward) in each variant, median of N interleaved
runs. Prints one JSON document.

    python benchmarks/amg_encoder_precision.py --vit-b-repeats 3 --out amg_encoder_precision.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling.common import MLPBlock
from torch import nn

from alps.sam import MaskGenerator
from alps.sam.tiny_vit import Mlp
from alps.sam.vit_fast import encode_image

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_sam, emit, machine_info
from amg_speed import build_model, recall, sample_image

VARIANTS = ("fp32", "bf16_weights", "autocast", "mlp_autocast")


class _Encoder(nn.Module):
    """An image encoder run in a given precision that hands a float32 embedding on."""

    def __init__(self, encoder: nn.Module, autocast: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.autocast = autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return encode_image(self.encoder, x).float()  # fast mode's forward for segment-anything's ViT


def _mlp_autocast(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` whose MLP blocks compute under bfloat16 autocast."""
    encoder = copy.deepcopy(encoder)
    for module in encoder.modules():
        if isinstance(module, Mlp | MLPBlock):
            plain = module.forward

            def forward(x: torch.Tensor, plain: Any = plain) -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return plain(x).float()

            module.forward = forward  # type: ignore[method-assign]
    return encoder


def generator(model: nn.Module, variant: str, **kw: Any) -> MaskGenerator:
    gen = MaskGenerator(model, mode="fast", **kw)
    gen._encoder = encoder_for(model, variant)
    return gen


def encoder_for(model: nn.Module, variant: str) -> nn.Module:
    """The image encoder a variant runs (``fp32``: the model's own)."""
    if variant == "bf16_weights":
        return _Encoder(copy.deepcopy(model.image_encoder).to(torch.bfloat16), autocast=False)
    if variant == "autocast":
        return _Encoder(model.image_encoder, autocast=True)
    if variant == "mlp_autocast":
        return _Encoder(_mlp_autocast(model.image_encoder), autocast=False)
    return model.image_encoder


def time_vit_b(variants: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of the ViT-B encoder at 1024 px per variant, each with fast mode's forward."""
    model = bench_sam(seed=0).requires_grad_(False)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    encoders = {v: encoder_for(model, v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first round warms up
            for v, enc in encoders.items():
                pixels = x.to(next(enc.parameters()).dtype)
                t = time.perf_counter()
                encode_image(enc, pixels)
                times[v].append(time.perf_counter() - t)
    return {v: round(statistics.median(ts[1:]), 2) for v, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", default=["OSBS_029.png", "SOAP_031.png", "SOAP_061.png"])
    parser.add_argument("--grid", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--vit-b-repeats", type=int, default=0, help="also time the ViT-B encoder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = build_model("litemedsam")
    kw: dict[str, Any] = {"points_per_side": args.grid, "prompt": "boxes", "output_mode": "coco_rle"}
    report: dict[str, Any] = {"machine": machine_info(), "grid": args.grid, "per_image": {}}
    for name in args.images:
        image = sample_image(name)
        exact = MaskGenerator(model, mode="exact", **kw).generate(image)
        row: dict[str, Any] = {"exact_masks": len(exact)}
        for variant in args.variants:
            t = time.perf_counter()
            masks = generator(model, variant, **kw).generate(image)
            row[variant] = {
                "masks": len(masks),
                "recall": round(recall(exact, masks), 4),
                "precision": round(recall(masks, exact, min_area=50), 4),
                "s": round(time.perf_counter() - t, 2),
            }
        report["per_image"][name] = row
        print(name, row, file=sys.stderr, flush=True)
    report["mean_recall"] = {
        v: round(sum(r[v]["recall"] for r in report["per_image"].values()) / len(args.images), 4)
        for v in args.variants
    }
    if args.vit_b_repeats:
        report["vit_b_encoder_s"] = time_vit_b(args.variants, args.vit_b_repeats)
    emit(report, args.out)


if __name__ == "__main__":
    main()
