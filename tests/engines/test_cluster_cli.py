"""``alps label --engine ray --address``: a real two-node Ray cluster on this machine, driven by the CLI.

The cluster is two ``ray start --block`` processes (a head and a worker node, one CPU each, bound
to 127.0.0.1, in their own temp dir); stopping them (SIGTERM) stops exactly the processes they
started, so the in-process Ray of the other engine tests is not touched. The tests: a run on both
nodes gives the local engine's labels, and a driver killed mid-run resumes when re-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alps.cli import main as cli_main
from tests.labeling.test_pinned_outputs import summarise
from tests.labeling.test_run import _cli, _env, label_bytes

if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_env() -> dict[str, str]:
    """Environment of every process of the test cluster: alps from this checkout, no token auth."""
    return {**_env(), "RAY_AUTH_MODE": "disabled"}


def alive_nodes(address: str) -> int:
    done = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, timeout=120,
                          env=cluster_env())  # fmt: skip
    active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """``HOST:PORT`` of a running two-node cluster (head + one worker node)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="alps-ray-")  # short: Ray's socket paths must stay < 108 bytes
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    env = cluster_env()
    nodes = [subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--temp-dir={temp}", *common], env=env)]  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and alive_nodes(address) < 1:
            time.sleep(2)
        nodes.append(subprocess.Popen([RAY, "start", f"--address={address}", *common], env=env))
        while time.monotonic() < deadline and alive_nodes(address) < 2:
            time.sleep(2)
        if alive_nodes(address) < 2:
            pytest.fail("the two-node Ray cluster did not come up within 4 minutes")
        yield address
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The three small NEON tiles, each twice (six units of a few seconds each)."""
    from alps.samples.neon import SMALL_IMAGES, sample_images
    from tests.conftest import require_asset

    paths = require_asset("NEON sample images", lambda: sample_images(names=SMALL_IMAGES))
    folder = tmp_path_factory.mktemp("neon")
    for path in paths:
        for copy in ("a", "b"):
            (folder / f"{path.stem}_{copy}.png").write_bytes(path.read_bytes())
    return sorted(str(p) for p in folder.iterdir())


def recorded(out: Path) -> dict[str, int]:
    """Items whose state says ok (recorded as finished), with their state file's mtime."""
    done = {}
    for path in (out / "state").glob("*.json"):
        try:
            if json.loads(path.read_text()).get("status") == "ok":
                done[path.stem] = path.stat().st_mtime_ns
        except (OSError, ValueError):  # being replaced right now
            continue
    return done


def settings(checkpoint: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--masks", "slic", "--points-per-side", "6", "--clusters", "4",
            "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def local_run(
    inputs: list[str], litemedsam_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The local engine at one thread (torch and BLAS), as each one-CPU Ray worker runs."""
    import torch
    from threadpoolctl import threadpool_limits

    out = tmp_path_factory.mktemp("local") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            assert cli_main(["label", *inputs, "--out", str(out), *settings(litemedsam_checkpoint)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_two_node_cli_run_matches_local(
    two_nodes: str, inputs: list[str], litemedsam_checkpoint: Path, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["--engine", "ray", "--address", two_nodes, "--workers", "2"]
    done = subprocess.run(_cli("label", *inputs, "--out", str(out), *settings(litemedsam_checkpoint), *args),
                          env=cluster_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert label_bytes(out) == label_bytes(local_run) and len(label_bytes(out)) == len(inputs)
    assert summarise(out) == summarise(local_run)
    engine = json.loads((out / "manifest.json").read_text())["engine"]
    assert engine["name"] == "ray" and engine["address"] == two_nodes
    assert engine["nodes"] == 2 and engine["workers"] == 2


def test_killed_driver_resumes_without_redoing(
    two_nodes: str, inputs: list[str], litemedsam_checkpoint: Path, local_run: Path, tmp_path: Path
) -> None:
    """SIGKILL the driver once some items are recorded; the same command again redoes none of them."""
    out = tmp_path / "out"
    command = _cli("label", *inputs, "--out", str(out), *settings(litemedsam_checkpoint),
                   "--engine", "ray", "--address", two_nodes, "--workers", "2")  # fmt: skip
    proc = subprocess.Popen(command, env=cluster_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not recorded(out):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(5)  # the cluster notices the dead driver and stops its actors
    finished = recorded(out)
    if proc.returncode != -signal.SIGKILL or not 0 < len(finished) < len(inputs):
        pytest.fail(f"the driver was not killed mid-run (rc {proc.returncode}, {len(finished)} recorded)")
    assert not (out / "manifest.json").exists()

    done = subprocess.run(command, env=cluster_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    todo = re.findall(r"(\d+) unit\(s\) to process", (out / "log.txt").read_text())
    assert int(todo[-1]) <= len(inputs) - len(finished)  # what was finished was not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert {r["id"] for r in manifest["images"] if r["resumed"]} >= set(finished)
    assert recorded(out) | finished == recorded(out)  # their state untouched
    assert label_bytes(out) == label_bytes(local_run)
    assert summarise(out) == summarise(local_run)
