"""The train/val split, one rule for labelling (``alps label``) and training (``alps train``).

Each id is ordered by ``sha256("<seed>:<id>")``; the first ``round(n * val_fraction)`` ids go to
``val``. The order of an id depends only on the id and the seed, so adding images moves few others,
and the split does not depend on the order the ids are given in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence


def split_ids(
    ids: Sequence[str], val_fraction: float, seed: int, groups: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Map each id to ``"train"`` or ``"val"``, deterministically.

    ``val_fraction`` in [0, 1]: 0 holds nothing out, 1 holds everything out. At least one id goes
    to val when ``0 < val_fraction`` and there are two or more ids, and at least one stays in
    train when ``val_fraction < 1``. ``groups`` (id -> group, e.g. slice -> volume or case) splits
    whole groups instead: every id of a group lands in the group's split; ids not in ``groups`` are
    their own group. Raises ``ValueError`` for a fraction outside [0, 1].
    """
    if groups:
        keys = {i: groups.get(i, i) for i in ids}
        by_group = split_ids(list(dict.fromkeys(keys.values())), val_fraction, seed)
        return {i: by_group[keys[i]] for i in ids}
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    n = len(ids)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    if val_fraction < 1:
        n_val = min(n_val, max(n - 1, 0))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    val = set(order[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}
