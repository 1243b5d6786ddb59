"""Review the pseudo-classes of an ``alps label`` run: a static HTML report, cluster -> class mappings
(``alps map``) and exports for labelling tools (Label Studio, CVAT).

Modules: :mod:`alps.review.report`, :mod:`alps.review.mapping`, :mod:`alps.review.exports`,
:mod:`alps.cli.review` (the ``report``, ``map`` and ``export`` sub-commands).
"""

from __future__ import annotations

__all__ = ["apply_mapping", "build_report", "derive_mapping", "export_cvat", "export_label_studio"]


def __getattr__(name: str) -> object:
    """Lazy access to the main functions (keeps ``import alps.review`` cheap for the CLI)."""
    if name in ("apply_mapping", "derive_mapping"):
        from alps.review import mapping

        return getattr(mapping, name)
    if name == "build_report":
        from alps.review.report import build_report

        return build_report
    if name in ("export_cvat", "export_label_studio"):
        from alps.review import exports

        return getattr(exports, name)
    raise AttributeError(f"module 'alps.review' has no attribute {name!r}")
