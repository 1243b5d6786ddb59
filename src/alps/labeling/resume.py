"""Resume state of ``alps label``: which parameters made the tables, and which inputs are done.

``DIR/params.json`` holds the parameters the mask tables depend on; a re-run with other values is
refused with the list of changes (or, with ``force``, discards the tables). ``DIR/state/<id>.json``
holds, per item, the input's fingerprint (sha256, size, mtime), the parameter hash, its settings
(a scene: its tiling) and its counts. An item is done when its state matches and all its units'
tables exist; a multi-unit item (a scene) whose state matches but is partial resumes at its first
missing unit.

Resuming 100k images must not re-read them: when size and ``mtime_ns`` equal the recorded ones,
the recorded sha256 is trusted; otherwise the file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alps.core.files import sha256_file, write_json

log = logging.getLogger(__name__)

STATE_FIELDS = ("height", "width", "source_mode", "conversion", "n_masks", "n_masks_kept", "seconds")


class ParamsMismatchError(ValueError):
    """The output directory holds work done with other parameters; the message lists them."""


class OutputDirError(ValueError):
    """The output directory is unusable (inside an input, or a foreign non-empty directory)."""


def hash_params(params: dict[str, Any]) -> str:
    """sha256 of the parameters as canonical JSON."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def check_output_dir(inputs: list[Path], out: Path) -> None:
    """Refuse an output directory equal to or inside an input, or containing an input."""
    out_r = out.expanduser().resolve()
    for item in inputs:
        inp = Path(item).expanduser().resolve()
        if inp.is_dir() and (out_r == inp or inp in out_r.parents):
            raise OutputDirError(
                f"output directory {out} is inside the input {item}: outputs could be read back as inputs "
                "or overwrite them; choose an output directory outside every input"
            )
        if out_r == inp or out_r in inp.parents:
            raise OutputDirError(
                f"input {item} is inside the output directory {out}: the run could overwrite or delete it; "
                "choose an output directory that holds no input"
            )


def check_params(out: Path, params: dict[str, Any], force: bool) -> None:
    """Compare with ``params.json`` of an earlier run; refuse on change unless ``force``."""
    path = out / "params.json"
    if not path.exists():
        leftovers = [p.name for p in out.iterdir()] if out.exists() else []
        if leftovers and not force:
            raise OutputDirError(
                f"{out} is not empty and was not written by `alps label` (no params.json); "
                "choose a new or empty directory, or pass --force to write into it anyway"
            )
        write_json(path, params)
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
    if not changed:
        return
    if not force:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {params.get(k)!r}" for k in changed)
        raise ParamsMismatchError(
            f"{out} holds mask tables made with other settings ({details}). Re-run with the earlier "
            "settings to resume, choose another output directory, or pass --force (force=True) to "
            "discard the earlier tables and start over."
        )
    log.warning("--force: discarding earlier tables (changed: %s)", ", ".join(changed))
    for sub in ("tables", "state"):
        shutil.rmtree(out / sub, ignore_errors=True)
    write_json(path, params)


def load_state(path: Path) -> dict[str, Any] | None:
    """A state file's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Fingerprint:
    """What identifies an input's bytes: sha256, plus size and mtime for the fast path."""

    sha256: str
    size: int
    mtime_ns: int

    def fields(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "mtime_ns": self.mtime_ns}


def fingerprint(path: Path, state: dict[str, Any] | None) -> Fingerprint:
    """The input's fingerprint; the recorded sha256 is reused when size and mtime are unchanged.

    Raises:
        OSError: the file cannot be read.
    """
    stat = path.stat()
    if state and state.get("size") == stat.st_size and state.get("mtime_ns") == stat.st_mtime_ns:
        recorded = state.get("sha256")
        if isinstance(recorded, str):
            return Fingerprint(recorded, stat.st_size, stat.st_mtime_ns)
    return Fingerprint(sha256_file(path), stat.st_size, stat.st_mtime_ns)


def state_matches(
    state: dict[str, Any] | None, params_hash: str, print_: Fingerprint, settings: dict[str, Any]
) -> bool:
    """The state was written for these parameters, these input bytes and these item settings."""
    return (
        state is not None
        and state.get("params_hash") == params_hash
        and state.get("sha256") == print_.sha256
        and state.get("settings", {}) == settings
    )
