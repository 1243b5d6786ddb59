"""One mechanism for every alps configuration: a frozen dataclass is the single source of truth.

Each field is declared with :func:`option` (default, help, choices, group, and free metadata such as
"the mask tables depend on it"). From the dataclass alone this module derives

- the command-line flags (:func:`add_flags`; ``--flag-name`` per field, booleans as
  ``--x/--no-x``, defaults suppressed so that only the flags given override a config file),
- reading a YAML/JSON file and merging layers (:func:`merge`: defaults < file < flags < overrides,
  unknown keys refused with the list of known ones),
- the YAML written back (:func:`to_yaml`), which reads in again to the same config.

Why not jsonargparse or LightningCLI: the two configs (``alps label`` and training) need exactly
these four things; keeping them on plain dataclasses adds no dependency, keeps the Python API
(``alps.label(..., config)``) and the CLI identical by construction, and LightningCLI covers training
only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["add_flags", "field_type", "from_dict", "merge", "option", "read_config_file", "to_yaml"]

C = TypeVar("C")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A config field: ``default`` plus ``help`` and free metadata (``choices``, ``group``, ...)."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **metadata}
        )
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of field ``name`` (``int``, ``str | None``, ...)."""
    return typing.get_type_hints(cls)[name]


def _scalar(annotation: Any) -> Any:
    """``int`` for ``int | None`` and so on; ``None`` for non-scalar annotations (dicts, lists)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    return annotation if annotation in (bool, int, float, str) else None


def _parse_value(kind: Any, text: str) -> Any:
    if text.lower() in ("none", "null", ""):
        return None
    return kind(text)


def add_flags(
    parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = (), groups: Mapping[str, str] = {}
) -> None:
    """Add one flag per field of ``cls`` (fields with ``cli=False`` metadata and ``skip`` excluded).

    A field's flag text is converted by its scalar annotation, or by the ``flag_type`` metadata
    (e.g. ``str`` for a field such as ``int | str`` that the dataclass itself parses and checks).

    Fields with a ``group`` go to an argument group titled by it (``groups`` gives its description).
    Defaults are ``argparse.SUPPRESS``: the namespace holds only the flags actually given, so that
    :func:`merge` can layer them over a config file. Dict fields take ``KEY=VALUE`` (repeatable;
    VALUE parsed as JSON, else kept as a string).
    """
    made: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False or f.metadata.get("positional"):
            continue
        title = f.metadata.get("group")
        target: Any = parser
        if title:
            if title not in made:
                made[title] = parser.add_argument_group(title, groups.get(title))
            target = made[title]
        _add_flag(target, cls, f)


def _add_flag(target: Any, cls: type, f: dataclasses.Field[Any]) -> None:
    flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
    factory: Any = f.default_factory
    default = f.default if f.default is not dataclasses.MISSING else factory()
    help_text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")
    kind = f.metadata.get("flag_type") or _scalar(field_type(cls, f.name))
    common: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f.name}
    if kind is bool:
        target.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
    elif kind is None:  # a mapping: KEY=VALUE pairs
        target.add_argument(*flags, action=_KeyValue, metavar="KEY=VALUE", **common)
    elif "const" in f.metadata:  # a bare flag means the const value (e.g. ``--resume`` = "last")
        target.add_argument(
            *flags, nargs="?", const=f.metadata["const"], metavar=f.metadata.get("metavar"), **common
        )
    else:
        choices = f.metadata.get("choices")
        target.add_argument(
            *flags,
            type=lambda text, k=kind: _parse_value(k, text),
            choices=choices,
            metavar=f.metadata.get("metavar") or (None if choices else f.name.upper()),
            **common,
        )


class _KeyValue(argparse.Action):
    """``--flag KEY=VALUE`` (repeatable) into a dict; VALUE is read as JSON, else as a string."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        key, sep, raw = str(values).partition("=")
        if not sep or not key.strip():
            parser.error(f"{option_string} expects KEY=VALUE, got {values!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        current = dict(getattr(namespace, self.dest, None) or {})
        current[key.strip()] = value
        setattr(namespace, self.dest, current)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Keys of a YAML (or JSON) config file; an empty file is an empty mapping."""
    text = Path(path).read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option: value")
    return values


def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Build ``cls`` from a mapping (``-`` in keys accepted); unknown keys are refused with the known ones."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    clean = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(clean) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return cls(**clean)


def merge(cls: type[C], *layers: Mapping[str, Any]) -> C:
    """Config from mappings applied left to right over the defaults (later layers win)."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({str(k).replace("-", "_"): v for k, v in layer.items()})
    return from_dict(cls, values)


def to_yaml(config: Any) -> str:
    """The config as YAML, fields in declaration order; :func:`read_config_file` reads it back."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
