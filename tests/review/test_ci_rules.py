"""The rule of the review tests: a missing real-data asset or browser skips locally and fails on CI."""

from __future__ import annotations

import pytest

from tests.review.conftest import missing


def test_missing_assets_fail_under_ci_and_skip_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and chromium"):
        missing("chromium is not installed")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        missing("chromium is not installed")
