"""Automatic mask generation: the official SAM recipe, restructured to be fast on any device.

:class:`MaskGenerator` takes every keyword of ``segment_anything.SamAutomaticMaskGenerator`` with
the same defaults and meaning and returns the same records. Two modes:

``mode="exact"``
    The official algorithm step by step (grid of prompts per crop, IoU filter, stability filter,
    crop-edge filter, box NMS per crop and across crops, optional small-region clean-up), with the
    encoder's official operations bit for bit (:func:`alps.sam.vit_fast.vit_forward_exact`), the
    decoder of :mod:`alps.sam.decoder` (its output upscaling as matrix products,
    :func:`alps.sam.decoder.upscale_masks_gemm`) and full-resolution post-processing only of masks
    that can survive. Results equal the official generator's up to floating-point rounding in the
    decoder (logit differences ~1e-6 relative); the two resizes to the image decide every
    pixel with the official arithmetic (:class:`alps.sam.decoder.SamResize`).

``mode="fast"``
    Like exact, but the ViT encoder runs its attention through PyTorch's fused kernel
    (:func:`alps.sam.vit_fast.vit_forward`), on CPU in float32 the two-way transformer keeps the image
    keys factored (:mod:`alps.sam.lowrank`: the same function, about half the multiply-adds per
    prompt; ``factored=False`` turns it off), and the stability score, boxes, crop-edge test
    and NMS are computed on the 256x256 low-resolution logits (the stability score again at image size
    where it lies within ``STABILITY_MARGIN`` of its cut-off, so borderline masks are decided as at
    full resolution); only NMS survivors are upsampled, in one step, to the image.
    ``precision="mixed"`` (or ``"auto"`` where the device computes bfloat16 natively: CPUs with
    AVX-512 BF16 or AMX, CUDA GPUs that support it) runs only the decoder's output upscaling (its two
    products, layer norm, activations and the hypernetwork products) in bfloat16, after a float32
    encoder and transformer: the IoU scores are float32 ones, and the logits move by bfloat16 rounding
    only. On an AVX-512 BF16 CPU it made fast mode 1.1-1.2x faster where masks survive, and kept
    97.5-98.2 % of exact mode's masks with LiteMedSAM (float32: 98.2-99.4 %).
    ``precision="bf16"`` runs the encoder and the decoder's transformer and upscaling in bfloat16 (as
    SAM 2's own predictors do on GPU); the prompt encoder (its Fourier features need float32), the IoU
    scores and the mask logits stay float32. It is opt-in: on an AVX-512 BF16 CPU it made fast mode
    1.5x faster but kept about 90 % of exact mode's masks with LiteMedSAM: a bfloat16 encoder moves
    the scores across their cut-offs (``benchmarks/amg_speed.py --fast-precisions``).
    Masks that survive NMS differ from exact mode only near decision thresholds; recall against
    exact mode is measured by ``benchmarks/amg_speed.py``.

On CPU, prompt batches are decoded by worker threads that each run single-threaded ops
(``decoder_workers``), and their candidates are merged in prompt order, so the result does not depend on
thread scheduling.

``prompt="boxes"`` replaces the point grid by the multi-scale box grid of
:func:`alps.sam.prompts.build_box_grid` (for box-trained models such as LiteMedSAM; one mask
output per box, as SAM does for box prompts). ``prompt=None`` picks the model's default.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops.boxes import batched_nms

from alps.core.rgb import check_size, to_rgb_uint8
from alps.sam.decoder import (
    DecoderOutput,
    ImageContext,
    SamResize,
    decode_tokens,
    upscale_masks_gemm,
)
from alps.sam.lowrank import (
    LowRankContext,
    LowRankOutput,
    decode_tokens_lowrank,
    first_upscaling_step,
    supports_lowrank,
)
from alps.sam.prompts import box_grid_for_layer
from alps.sam.types import Geometry, MaskResult
from alps.sam.vit_fast import encode_image

_T = TypeVar("_T")
Prompt = Literal["points", "boxes"]
Mode = Literal["exact", "fast"]
Precision = Literal["auto", "fp32", "mixed", "bf16"]
# Default (pred_iou_thresh, stability_score_thresh) per prompt type. Points: the official defaults.
# Boxes: a box-trained model's logits are softer and its IoU head more modest (LiteMedSAM on the NEON
# sample tiles: predicted IoU 0.54-0.84 and stability 0.49-0.80, 5th-95th percentile), so the
# official cut-offs would drop every mask; 0.75 / 0.7 keep the better quarter, and with the
# overlapping multi-scale boxes that still labels >90 % of the pixels of those tiles.
THRESHOLDS: dict[str, tuple[float, float]] = {"points": (0.88, 0.95), "boxes": (0.75, 0.7)}
# On CPU at most this many prompts are decoded together: per-prompt image-side tensors are 4 MB,
# and small batches keep them in cache (GPUs take points_per_batch as given).
CPU_DECODER_BATCH = 2
# On CPU, prompt batches are decoded by this many worker threads at most, each running single-threaded
# ops: the decoder's ops are small, and one thread per batch beats splitting every op across threads
# (decoder + upscaling on 2 cores: 25.7 -> 19.5 s per 1024 prompts, median of 3 interleaved runs).
CPU_DECODER_WORKERS = 4
# Full-resolution logits upsampled together (bounds memory: chunk * H * W floats).
UPSAMPLE_CHUNK = 16
# Fast mode: candidates whose low-res stability score lies within this of stability_score_thresh get it
# recomputed at image size before the cut-off.
STABILITY_MARGIN = 0.05


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports bfloat16, or a
    CPU with AVX-512 BF16 or AMX (elsewhere oneDNN emulates bfloat16 and it is slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, mode: str, device: torch.device) -> Literal["fp32", "mixed", "bf16"]:
    """The compute precision a generator uses: exact mode is always float32; fast mode's ``"auto"`` is
    ``"mixed"`` (the upscaling in bfloat16) where :func:`native_bf16` (emulated bfloat16 is slower
    than float32), else float32; ``"bf16"`` (the encoder and decoder too) is only used when asked for."""
    if precision not in ("auto", "fp32", "mixed", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'mixed' or 'bf16', not {precision!r}")
    if mode == "exact":
        if precision in ("mixed", "bf16"):
            raise ValueError(
                f"precision={precision!r} needs mode='fast' "
                "(exact mode reproduces the official float32 masks)"
            )
        return "fp32"
    if precision == "auto":
        return "mixed" if native_bf16(device) else "fp32"
    if precision == "mixed":
        return "mixed"
    return "bf16" if precision == "bf16" else "fp32"


def _bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of ``module`` (the caller's module is left as it is)."""
    return copy.deepcopy(module).to(torch.bfloat16).requires_grad_(False)


def default_prompt(model: Sam | str) -> Prompt:
    """The prompt type the model (or ``model_type`` name) was trained with, from its
    :class:`~alps.sam.registry.ModelSpec`: boxes for LiteMedSAM; points for SAM and models
    built outside the registry."""
    from alps.sam.registry import model_spec, spec_of

    spec = model_spec(model) if isinstance(model, str) else spec_of(model)
    return spec.default_prompt if spec is not None else "points"


@dataclass
class _Candidates:
    """Masks of one crop that passed the per-batch filters; masks kept as COCO RLE."""

    rles: list[dict[str, Any]] = field(default_factory=list)
    areas: list[torch.Tensor] = field(default_factory=list)  # (k,) pixels of each mask
    boxes: list[torch.Tensor] = field(default_factory=list)  # (k, 4) XYXY in crop coordinates
    iou: list[torch.Tensor] = field(default_factory=list)
    stability: list[torch.Tensor] = field(default_factory=list)
    points: list[torch.Tensor] = field(default_factory=list)  # (k, 2) prompt point in crop coords
    prompt_boxes: list[torch.Tensor] = field(default_factory=list)  # (k, 4) prompt box (boxes mode)
    low_res: list[torch.Tensor] = field(default_factory=list)  # fast mode: (k, h, w) logits

    def extend(self, other: _Candidates) -> None:
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))

    def cat(self) -> dict[str, Any]:
        def c(x: list[torch.Tensor], width: int) -> torch.Tensor:
            return torch.cat(x) if x else torch.zeros((0, width) if width else (0,))

        return {
            "rles": self.rles,
            "areas": c(self.areas, 0).long(),
            "boxes": c(self.boxes, 4),
            "iou": c(self.iou, 0),
            "stability": c(self.stability, 0),
            "points": c(self.points, 2),
            "prompt_boxes": c(self.prompt_boxes, 4),
            "low_res": torch.cat(self.low_res) if self.low_res else None,
        }


class MaskGenerator:
    """Generate masks for a whole image with SAM, like ``SamAutomaticMaskGenerator`` but faster.

    Parameters are those of the official generator (same defaults, same meaning), plus the
    following. ``pred_iou_thresh`` / ``stability_score_thresh`` left at ``None`` take the official
    defaults (0.88 / 0.95) for point prompts and 0.75 / 0.7 for box prompts (see ``THRESHOLDS``).

    prompt: ``"points"`` (official point grid), ``"boxes"`` (multi-scale box grid) or ``None``
        for the model's default (boxes for LiteMedSAM).
    mode: ``"exact"`` or ``"fast"`` (see module docstring).
    box_levels: scales of the box grid (``prompt="boxes"``).
    max_pixels: images above this many pixels are refused with advice to tile.
    decoder_workers: threads that decode prompt batches in parallel on CPU (``None``: as many as
        torch's intra-op threads, at most ``CPU_DECODER_WORKERS``; each then runs single-threaded ops,
        and torch's thread count is restored afterwards). Results do not depend on it except for
        floating-point rounding; a given setting is deterministic. Ignored on GPU.
    precision: fast mode's compute precision: ``"fp32"`` (default: the same masks on every machine),
        ``"mixed"`` (the decoder's output upscaling in bfloat16, the rest float32), ``"bf16"`` (the
        encoder and the decoder in bfloat16: faster, fewer of exact mode's masks), or ``"auto"``
        (``"mixed"`` where the device computes bfloat16 natively, see :func:`native_bf16`, else
        ``"fp32"``); see the module docstring. Exact mode is always float32 (``"mixed"`` and
        ``"bf16"`` are refused there). The precision used is ``self.precision``; ``"bf16"`` keeps a
        bfloat16 copy of the encoder and the mask decoder.
    factored: fast mode with a float32 transformer (``"fp32"`` or ``"mixed"``) on CPU runs SAM's
        two-way transformer with the image keys kept factored (:mod:`alps.sam.lowrank`: the same
        function up to rounding, about half the multiply-adds per prompt); ``False`` runs the plain
        restructured decoder instead (for comparison). Exact mode, ``"bf16"`` and GPUs always use
        the plain one.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        prompt: Prompt | None = None,
        mode: Mode = "exact",
        box_levels: int = 3,
        max_pixels: int = 64_000_000,
        decoder_workers: int | None = None,
        precision: Precision = "fp32",
        factored: bool = True,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise ValueError(f"unknown output_mode {output_mode!r}")
        if mode not in ("exact", "fast"):
            raise ValueError(f"mode must be 'exact' or 'fast', not {mode!r}")
        prompt = prompt or default_prompt(model)
        if prompt not in ("points", "boxes"):
            raise ValueError(f"prompt must be 'points' or 'boxes', not {prompt!r}")
        if prompt == "boxes" and points_per_side is None:
            raise ValueError("prompt='boxes' needs points_per_side (box grids are built from it)")
        self.model = model
        self.points_per_side = points_per_side
        if point_grids is not None:
            self.point_grids = list(point_grids)
        else:
            assert points_per_side is not None
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        self.points_per_batch = points_per_batch
        defaults = THRESHOLDS[prompt]
        self.pred_iou_thresh = defaults[0] if pred_iou_thresh is None else pred_iou_thresh
        self.stability_score_thresh = (
            defaults[1] if stability_score_thresh is None else stability_score_thresh
        )
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.prompt: Prompt = prompt
        self.mode: Mode = mode
        self.box_levels = box_levels
        self.max_pixels = max_pixels
        if decoder_workers is not None and decoder_workers < 1:
            raise ValueError(f"decoder_workers must be >= 1, not {decoder_workers}")
        self.decoder_workers = decoder_workers
        self.factored = factored
        self.prompts_decoded = 0  # prompts run through the decoder by the last generate call
        self.model_size = int(model.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.model_size)
        self.precision = resolve_precision(precision, mode, self.device)
        # the modules that compute in self.precision: the model's own, or bfloat16 copies
        self._encoder: torch.nn.Module = model.image_encoder
        self._decoder: torch.nn.Module = model.mask_decoder
        if self.precision == "bf16":
            self._encoder = _bf16_copy(model.image_encoder)
            self._decoder = _bf16_copy(model.mask_decoder)
        # "mixed": the output upscaling in bfloat16 after a float32 encoder and transformer
        self._upscale_dtype = torch.bfloat16 if self.precision == "mixed" else None

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ public API
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks of ``image`` (HxWx3 uint8; other layouts converted by :func:`to_rgb_uint8`)."""
        return self.generate_with_embedding(image).masks

    @torch.no_grad()
    def generate_with_embedding(self, image: np.ndarray) -> MaskResult:
        """Masks plus the whole-image embedding and its geometry (for feature pooling)."""
        image = to_rgb_uint8(image)
        check_size(image.shape, self.max_pixels)
        self.prompts_decoded = 0
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        parts = []
        embedding, geometry = None, None
        for crop_box, layer in zip(crop_boxes, layer_idxs, strict=True):
            part, emb, geo = self._process_crop(image, crop_box, layer, orig_size)
            parts.append(part)
            if embedding is None:
                embedding, geometry = emb, geo
        assert embedding is not None and geometry is not None
        data = _concat_parts(parts)
        if len(crop_boxes) > 1 and len(data["rles"]):
            crop_area = (data["crop_boxes"][:, 2] - data["crop_boxes"][:, 0]) * (
                data["crop_boxes"][:, 3] - data["crop_boxes"][:, 1]
            )
            keep = batched_nms(
                data["boxes"].float(),
                1 / crop_area.float(),
                torch.zeros(len(data["boxes"])),
                iou_threshold=self.crop_nms_thresh,
            )
            data = _select(data, keep)
        if self.min_mask_region_area > 0 and len(data["rles"]):
            data = self._remove_small_regions(data, orig_size)
        return MaskResult(self._records(data), embedding[0].float().cpu(), geometry)

    # ------------------------------------------------------------------ per crop
    def _embed(self, crop: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        resized = self.transform.apply_image(crop)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        pixels = self.model.preprocess(x)
        # exact: the official operations bit for bit (in-place attention; the module's own forward
        # for encoders other than segment-anything's ViT), so embeddings equal the official
        # generator's; fast: the fused-attention ViT forward (same maths, different rounding)
        dtype = next(self._encoder.parameters()).dtype
        embedding = encode_image(self._encoder, pixels.to(dtype), exact=self.mode == "exact")
        return embedding, input_size

    def _prompts(self, layer: int, crop_size: tuple[int, int]) -> np.ndarray:
        scale = np.array(crop_size)[::-1]  # (w, h)
        if self.prompt == "points":
            return self.point_grids[layer] * scale[None, :]
        assert self.points_per_side is not None
        grid = box_grid_for_layer(
            self.points_per_side, self.box_levels, layer, self.crop_n_points_downscale_factor
        )
        return grid * np.tile(scale, 2)[None, :]

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer: int, orig_size: tuple[int, int]
    ) -> tuple[dict[str, Any], torch.Tensor, Geometry]:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        embedding, input_size = self._embed(crop)
        geometry = Geometry(crop_size, input_size, self.model_size, int(embedding.shape[-1]))
        ctx = ImageContext.build(self.model.prompt_encoder, self._decoder, embedding)
        lowrank = None
        # on CPU (measured there); a GPU keeps the plain decoder, batched over points_per_batch prompts,
        # where the factored one would loop over them
        fp32_cpu = embedding.dtype == torch.float32 and self.device.type == "cpu"
        if self.mode == "fast" and self.factored and fp32_cpu and supports_lowrank(self._decoder):
            lowrank = LowRankContext.build(self._decoder, ctx, self._upscale_dtype or torch.float32)
        prompts = self._prompts(layer, crop_size)
        batch = self.points_per_batch
        if self.device.type == "cpu":
            batch = min(batch, CPU_DECODER_BATCH)

        inference = torch.is_inference_mode_enabled()

        def work(batch_prompts: np.ndarray) -> _Candidates:
            part = _Candidates()
            with torch.no_grad(), torch.inference_mode(inference):  # both are per thread
                self._process_batch(
                    ctx, lowrank, batch_prompts, crop_size, input_size, crop_box, orig_size, part
                )
            return part

        cands = _Candidates()
        batches = [prompts[start : start + batch] for start in range(0, len(prompts), batch)]
        for part in self._map_batches(work, batches):  # in prompt order, whatever the threads
            cands.extend(part)
        self.prompts_decoded += len(prompts)
        data = cands.cat()
        if len(data["rles"]):
            keep = batched_nms(
                data["boxes"].float(),
                data["iou"],
                torch.zeros(len(data["boxes"])),
                iou_threshold=self.box_nms_thresh,
            )
            data = _select(data, keep)
        if self.mode == "fast":
            data["rles"], data["areas"] = self._upsample_survivors(data.pop("low_res"), input_size, crop_size)
        data.pop("low_res", None)
        data["boxes"] = data["boxes"] + torch.tensor([x0, y0, x0, y0])
        data["points"] = data["points"] + torch.tensor([x0, y0], dtype=data["points"].dtype)
        data["prompt_boxes"] = data["prompt_boxes"] + torch.tensor([x0, y0, x0, y0], dtype=torch.float)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"])).reshape(-1, 4)
        if crop_size != orig_size:
            data["rles"] = [_uncrop_rle(r, crop_box, orig_size) for r in data["rles"]]
        return data, embedding, geometry

    def _map_batches(self, fn: Callable[[np.ndarray], _T], batches: list[np.ndarray]) -> Iterator[_T]:
        """``map(fn, batches)``, on CPU spread over worker threads with single-threaded ops."""
        threads = torch.get_num_threads()
        workers = self.decoder_workers or min(threads, CPU_DECODER_WORKERS)
        workers = min(workers, len(batches))
        if self.device.type != "cpu" or workers <= 1:
            yield from map(fn, batches)
            return
        with _intra_op_threads(max(1, threads // workers)), ThreadPoolExecutor(workers) as pool:
            yield from pool.map(fn, batches)

    def _encode_prompts(self, prompts: np.ndarray, crop_size: tuple[int, int]) -> torch.Tensor:
        encoder = self.model.prompt_encoder
        if self.prompt == "points":
            coords = torch.as_tensor(
                self.transform.apply_coords(prompts, crop_size), dtype=torch.float, device=self.device
            )
            labels = torch.ones(len(coords), 1, dtype=torch.int, device=self.device)
            sparse, _ = encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        else:
            boxes = torch.as_tensor(
                self.transform.apply_boxes(prompts, crop_size), dtype=torch.float, device=self.device
            )
            sparse, _ = encoder(points=None, boxes=boxes, masks=None)
        return sparse

    def _process_batch(
        self,
        ctx: ImageContext,
        lowrank: LowRankContext | None,
        prompts: np.ndarray,
        crop_size: tuple[int, int],
        input_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        cands: _Candidates,
    ) -> None:
        sparse = self._encode_prompts(prompts, crop_size).to(ctx.keys.dtype)
        out: DecoderOutput
        if lowrank is None:
            out = decode_tokens(self._decoder, ctx, sparse)
        else:  # fast mode, float32: the image keys stay factored (alps.sam.lowrank)
            out = decode_tokens_lowrank(self._decoder, lowrank, sparse)
        # multimask outputs 1..3 for points, the single output 0 for boxes (as SAM does per prompt type)
        outputs = [1, 2, 3] if self.prompt == "points" else [0]
        n_out = len(outputs)
        iou = out.iou_pred[:, outputs].flatten().float()
        prompt_idx = torch.arange(len(prompts), device=iou.device).repeat_interleave(n_out)
        mask_idx = torch.tensor(outputs, device=iou.device).repeat(len(prompts))
        keep = (
            iou > self.pred_iou_thresh
            if self.pred_iou_thresh > 0.0
            else torch.ones_like(iou, dtype=torch.bool)
        )
        if not keep.any():
            return
        prompt_idx, mask_idx, iou = prompt_idx[keep], mask_idx[keep], iou[keep]
        # both modes: the upscaling as matrix products, a band of rows at a time (upscale_masks_gemm).
        # Its rounding differs from the modules' as the restructured decoder's does; on the equivalence
        # test's loose case it left 762 of 768 masks identical to the official ones, the modules 759
        first_step = None
        if lowrank is not None:
            assert isinstance(out, LowRankOutput)
            first_step = first_upscaling_step(lowrank, out)
        low_res = upscale_masks_gemm(
            self._decoder, ctx, out, prompt_idx, mask_idx, first_step, self._upscale_dtype
        ).float()
        threshold = float(self.model.mask_threshold)
        if self.mode == "fast":
            self._filter_low_res(
                low_res, iou, prompt_idx, prompts, input_size, crop_size, crop_box, orig_size, cands
            )
            return
        low_size = (int(low_res.shape[-2]), int(low_res.shape[-1]))
        resize = _sam_resize(low_size, self.model_size, input_size, crop_size)
        for start in range(0, len(iou), UPSAMPLE_CHUNK):
            sl = slice(start, start + UPSAMPLE_CHUNK)
            # = upscale_logits_like_sam(...) wherever a threshold below can tell the difference, each
            # mask transposed (column-major, as its RLE wants it; stability and areas do not care)
            logits = resize.logits(low_res[sl], threshold, self.stability_score_offset, transposed=True)
            stability = calculate_stability_score(logits, threshold, self.stability_score_offset)
            ok = (
                stability >= self.stability_score_thresh
                if self.stability_score_thresh > 0.0
                else torch.ones_like(stability, dtype=torch.bool)
            )
            masks = (logits if bool(ok.all()) else logits[ok]) > threshold
            del logits
            boxes = mask_boxes(masks, transposed=True)
            edge_ok = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            if not bool(edge_ok.all()):
                masks, boxes = masks[edge_ok], boxes[edge_ok]
            idx = torch.nonzero(ok).flatten()[edge_ok]
            self._add(
                cands,
                masks_to_rles(masks, transposed=True),
                mask_areas(masks),
                boxes,
                iou[sl][idx],
                stability[idx],
                prompt_idx[sl][idx],
                prompts,
            )

    def _add(
        self,
        cands: _Candidates,
        rles: list[dict[str, Any]],
        areas: torch.Tensor,
        boxes: torch.Tensor,
        iou: torch.Tensor,
        stability: torch.Tensor,
        prompt_idx: torch.Tensor,
        prompts: np.ndarray,
    ) -> None:
        if not len(boxes):
            return
        p = torch.as_tensor(prompts, dtype=torch.float64)[prompt_idx.cpu()]
        cands.rles.extend(rles)  # per-crop bookkeeping lives on the CPU, whatever the model's device
        cands.areas.append(areas.cpu())
        cands.boxes.append(boxes.cpu())
        cands.iou.append(iou.cpu())
        cands.stability.append(stability.cpu())
        if self.prompt == "points":
            cands.points.append(p)
            cands.prompt_boxes.append(torch.full((len(p), 4), float("nan")))
        else:
            cands.points.append((p[:, :2] + p[:, 2:]) / 2)
            cands.prompt_boxes.append(p)

    # ------------------------------------------------------------------ fast mode
    def _filter_low_res(
        self,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        prompt_idx: torch.Tensor,
        prompts: np.ndarray,
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        cands: _Candidates,
    ) -> None:
        """Stability, boxes and crop-edge test on the valid part of the low-res logits."""
        scale = low_res.shape[-1] / self.model_size
        vh, vw = (max(1, round(s * scale)) for s in input_size)
        valid = low_res[:, :vh, :vw]
        threshold = float(self.model.mask_threshold)
        stability = calculate_stability_score(valid, threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            # Recompute the stability near its cut-off from the logits at image size (as the mask
            # will be kept): the low-res score differs by up to a few hundredths, enough to flip
            # a borderline mask (most of fast mode's missed masks were such flips)
            near = torch.nonzero((stability - self.stability_score_thresh).abs() <= STABILITY_MARGIN)
            for start in range(0, len(near), UPSAMPLE_CHUNK):
                sl = near[start : start + UPSAMPLE_CHUNK, 0]
                full = _upsample_logits(valid[sl], crop_size)
                stability[sl] = calculate_stability_score(full, threshold, self.stability_score_offset)
            ok = stability >= self.stability_score_thresh
        else:
            ok = torch.ones_like(stability, dtype=torch.bool)
        masks = valid[ok] > threshold
        # low-res box edges -> crop pixels (cell borders: left/top inclusive, right/bottom exclusive)
        boxes = mask_boxes(masks).float().cpu()
        sx, sy = crop_size[1] / vw, crop_size[0] / vh
        boxes = boxes * torch.tensor([sx, sy, sx, sy]) + torch.tensor([0.0, 0.0, sx - 1, sy - 1])
        boxes = torch.minimum(
            boxes, torch.tensor([crop_size[1] - 1, crop_size[0] - 1] * 2, dtype=torch.float)
        )
        edge_ok = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
        idx = torch.nonzero(ok).flatten().cpu()[edge_ok]
        if not len(idx):
            return
        self._add(
            cands,
            [{}] * len(idx),
            torch.zeros(len(idx)),
            boxes[edge_ok].round().long(),
            iou[idx],
            stability[idx],
            prompt_idx[idx],
            prompts,
        )
        cands.low_res.append(valid[idx].clone())

    def _upsample_survivors(
        self, low_res: torch.Tensor | None, input_size: tuple[int, int], crop_size: tuple[int, int]
    ) -> tuple[list[dict[str, Any]], torch.Tensor]:
        if low_res is None or not len(low_res):
            return [], torch.zeros(0, dtype=torch.long)
        rles: list[dict[str, Any]] = []
        areas = []
        threshold = float(self.model.mask_threshold)
        for start in range(0, len(low_res), UPSAMPLE_CHUNK):
            masks = _upsample_logits(low_res[start : start + UPSAMPLE_CHUNK], crop_size) > threshold
            rles.extend(masks_to_rles(masks))
            areas.append(mask_areas(masks))
        return rles, torch.cat(areas).cpu()

    # ------------------------------------------------------------------ post-processing
    def _remove_small_regions(self, data: dict[str, Any], orig_size: tuple[int, int]) -> dict[str, Any]:
        """Official small-region clean-up: fill small holes, drop small islands, NMS again."""
        area = self.min_mask_region_area
        masks, unchanged = [], []
        for rle in data["rles"]:
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed_holes = remove_small_regions(mask, area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, area, mode="islands")
            masks.append(torch.as_tensor(mask))
            unchanged.append(float(not (changed_holes or changed_islands)))
        stacked = torch.stack(masks)
        boxes = mask_boxes(stacked)
        scores = torch.as_tensor(unchanged)
        keep = batched_nms(
            boxes.float(),
            scores,
            torch.zeros(len(boxes)),
            iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh),
        )
        for i in keep.tolist():
            if unchanged[i] == 0.0:
                data["rles"][i] = masks_to_rles(stacked[i : i + 1])[0]
                data["boxes"][i] = boxes[i]
                data["areas"][i] = stacked[i].sum()
        return _select(data, keep)

    def _records(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        rles = data["rles"]
        areas = data["areas"].tolist()
        records = []
        for i, rle in enumerate(rles):
            box = data["boxes"][i].tolist()
            crop = data["crop_boxes"][i].tolist()
            if self.output_mode == "binary_mask":
                seg: Any = mask_utils.decode(rle).astype(bool)
            elif self.output_mode == "coco_rle":
                seg = {"size": list(rle["size"]), "counts": rle["counts"].decode("utf-8")}
            else:
                seg = uncompressed_rle(mask_utils.decode(rle).astype(bool))
            record = {
                "segmentation": seg,
                "area": int(areas[i]),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "predicted_iou": float(data["iou"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability"][i]),
                "crop_box": [crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1]],
            }
            if self.prompt == "boxes":
                record["prompt_box"] = data["prompt_boxes"][i].tolist()
            records.append(record)
        return records


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=16)
def _sam_resize(
    low_res: tuple[int, int], model_size: int, input_size: tuple[int, int], out_size: tuple[int, int]
) -> SamResize:
    """:class:`SamResize` per geometry, built once (its weight matrices cost more than a batch's use)."""
    return SamResize.build(low_res, model_size, input_size, out_size)


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _upsample_logits(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) low-res logits (the valid part) -> (K, H, W) at ``size`` in one bilinear step: fast
    mode's masks at image (crop) size."""
    return F.interpolate(low_res[:, None], size, mode="bilinear", align_corners=False)[:, 0]


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) bool -> (K,) int32 pixel counts, summed per row in int16 first as segment-anything's
    stability score does (a bool ``sum`` over the flattened mask was measured 20x slower)."""
    row_dtype = torch.int16 if masks.shape[-1] < 2**15 else torch.int32
    return masks.sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)


def mask_boxes(masks: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """(K, H, W) bool -> (K, 4) int64 XYXY boxes, ``[0, 0, 0, 0]`` for an empty mask: the values and
    dtype of segment-anything's ``batched_mask_to_box`` (which returns float zeros when K = 0), from
    byte-wise maxima along rows and columns (its bool ``max`` over the rows' axis was measured 20x
    slower: 12.8 vs 0.6 ms for 16 masks of 512²). ``transposed``: ``masks`` is (K, W, H), each mask
    stored column-major; the boxes are those of the (H, W) masks.
    """
    if transposed:
        return mask_boxes(masks)[:, [1, 0, 3, 2]]
    k, h, w = masks.shape
    if masks.numel() == 0:
        return torch.zeros(k, 4, dtype=torch.int64, device=masks.device)
    u8 = masks.view(torch.uint8)

    def span(occupied: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(n, device=masks.device)
        return torch.where(occupied, idx, n).amin(-1), torch.where(occupied, idx, -1).amax(-1)

    top, bottom = span(u8.amax(-1).bool(), h)
    left, right = span(u8.amax(-2).bool(), w)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * (bottom >= top).unsqueeze(-1)


def masks_to_rles(masks: torch.Tensor, transposed: bool = False) -> list[dict[str, Any]]:
    """(K, H, W) bool -> COCO compressed RLEs (pycocotools' column-major layout); ``transposed``:
    ``masks`` is (K, W, H), already column-major per mask, so no transposing copy is needed."""
    if not len(masks):
        return []
    column_major = masks if transposed else masks.transpose(1, 2)
    fortran = column_major.contiguous().cpu().view(torch.uint8).numpy().transpose(2, 1, 0)
    rles = mask_utils.encode(fortran)
    return list(rles)


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """The official ``uncompressed_rle`` record: column-major run lengths starting with zeros."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _uncrop_rle(rle: dict[str, Any], crop_box: list[int], orig_size: tuple[int, int]) -> dict[str, Any]:
    x0, y0, x1, y1 = crop_box
    full = np.zeros(orig_size, dtype=np.uint8)
    full[y0:y1, x0:x1] = mask_utils.decode(rle)
    return dict(mask_utils.encode(np.asfortranarray(full)))


def _select(data: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    idx = keep.tolist()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            out[key] = None
        elif isinstance(value, list):
            out[key] = [value[i] for i in idx]
        else:
            out[key] = value[keep]
    return out


def _concat_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rles": [r for p in parts for r in p["rles"]]}
    for key in ("areas", "boxes", "iou", "stability", "points", "prompt_boxes", "crop_boxes"):
        out[key] = torch.cat([p[key] for p in parts])
    return out
