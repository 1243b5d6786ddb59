"""The one train/val split rule (labelling and training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alps.core.splits import split_ids
from alps.train.data import Sample, split_holdout


def test_split_is_deterministic_and_exact() -> None:
    ids = [f"img_{i}" for i in range(20)]
    split = split_ids(ids, 0.25, seed=0)
    assert sum(v == "val" for v in split.values()) == 5
    assert split == split_ids(list(reversed(ids)), 0.25, seed=0)  # order of listing does not matter
    assert split != split_ids(ids, 0.25, seed=1)
    assert set(split_ids(ids, 0.0, 0).values()) == {"train"}
    assert set(split_ids(ids, 1.0, 0).values()) == {"val"}
    assert list(split_ids(["a", "b"], 0.01, 0).values()).count("val") == 1  # at least one val
    assert list(split_ids(["a", "b"], 0.99, 0).values()).count("train") == 1  # at least one train
    assert split_ids(["a"], 0.5, 0) == {"a": "train"}
    assert split_ids([], 0.5, 0) == {}
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\], got 1.5"):
        split_ids(ids, 1.5, 0)


def test_pinned_assignment() -> None:
    # the sha256 order: identical to alps.labeling.run._split_ids, which wrote the pinned datasets
    split = split_ids([f"img_{i}" for i in range(6)], 0.34, seed=0)
    assert [i for i, v in split.items() if v == "val"] == ["img_0", "img_5"]


def test_groups_split_whole_groups() -> None:
    groups = {f"case{c}_z{z}": f"case{c}" for c in range(5) for z in range(4)}
    ids = [*groups, "loose"]
    split = split_ids(ids, 0.4, seed=3, groups=groups)
    by_case = split_ids([f"case{c}" for c in range(5)] + ["loose"], 0.4, seed=3)
    assert split == {i: by_case[groups.get(i, i)] for i in ids}
    assert {split[f"case{c}_z{z}"] for c in range(5) for z in range(4)} == {"train", "val"}


def test_training_holdout_uses_the_same_rule_and_zero_holds_nothing_out() -> None:
    samples = [Sample(f"s{i}", Path(f"s{i}.png"), Path(f"s{i}_label.png")) for i in range(7)]
    train, val = split_holdout(samples, 0.0, seed=0)
    assert train == samples and val == []  # used to hold one image out regardless
    train, val = split_holdout(samples, 0.3, seed=2)
    split = split_ids([s.id for s in samples], 0.3, 2)
    assert [s.id for s in val] == [i for i, v in split.items() if v == "val"] and len(val) == 2
    assert sorted(train + val, key=lambda s: s.id) == samples
