"""`ggufkit batch --ray` on a real Ray cluster: a head and one worker node on the loopback, started
with `ray start` and torn down afterwards (budget: 5 minutes for the module, cluster included).

The nodes share this GGUFKIT_HOME, so they use the cached llama.cpp build (nothing is compiled).
One quantize step is held by the test hook (tests/batch_hold: GGUFKIT_BATCH_HOLD) with its partial
file open; the test kills that worker's process group, llama-quantize included, and Ray's retry
must give the same bytes and leave no partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from batch_reference import batch_digests, by_hand, partial_files, write_plan

from ggufkit.workspace.batch import BatchSummary, load_plan, run_batch

pytestmark = [
    pytest.mark.needs_ray,
    pytest.mark.posix_only,  # process groups, killpg
    pytest.mark.needs_llamacpp,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]
# A loopback address, so nothing outside this machine can reach the cluster. Not 127.0.0.1: Ray
# turns that (and "localhost") in an address into this machine's network address, on which a
# cluster bound to the loopback does not listen; the rest of 127.0.0.0/8 it leaves alone.
LOOPBACK = "127.0.0.2"
HELD = "milton:quantize:q8_0"
RAY = Path(sys.executable).with_name("ray")
# The hook's folder, put on the cluster's PYTHONPATH: its sitecustomize holds the HELD step.
HOOK = Path(__file__).resolve().parent / "batch_hold"
HOLD_ENV = "GGUFKIT_BATCH_HOLD"
START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, temp_dir: Path, marker: Path) -> None:
        self.temp_dir, self.port = temp_dir, _free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, HOLD_ENV: f"{HELD}={marker}", "PYTHONPATH": path}
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"
        self.nodes: list[subprocess.Popen[bytes]] = []

    def start_node(self, *args: str) -> None:
        common = ["--node-ip-address", LOOPBACK, "--num-cpus", "1"]
        common += ["--object-store-memory", "200000000", "--disable-usage-stats", "--block"]
        common += ["--dashboard-agent-listen-port", str(_free_port())]
        common += ["--runtime-env-agent-port", str(_free_port())]
        common += ["--metrics-export-port", str(_free_port())]
        log = open(self.temp_dir / f"node{len(self.nodes)}.log", "wb")  # noqa: SIM115
        self.nodes.append(
            subprocess.Popen(
                [str(RAY), "start", *common, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the teardown takes it whole
            )
        )

    def wait_for_nodes(self, count: int) -> None:
        import ray

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                ray.init(address=self.address, configure_logging=False, log_to_driver=False)
                try:
                    alive = [n for n in ray.nodes() if n.get("Alive")]
                finally:
                    ray.shutdown()
                if len(alive) >= count:
                    return
            except (OSError, RuntimeError):
                pass
            if time.monotonic() > deadline or any(n.poll() is not None for n in self.nodes):
                logs = "".join(
                    p.read_text(errors="replace")[-2000:] for p in self.temp_dir.glob("*.log")
                )
                raise RuntimeError(f"the Ray cluster did not come up:\n{logs}")
            time.sleep(1.0)

    def stop(self) -> None:
        """Every process of this cluster, found by its process group or its temp dir."""
        for node in self.nodes:
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for node in self.nodes:
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=10)
        mine = str(self.temp_dir)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(mine in part for part in proc.info["cmdline"] or ()):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="gkray", dir="/tmp"))  # short: socket paths
    ray_cluster = Cluster(temp_dir, temp_dir / "held.json")
    try:
        ray_cluster.start_node(
            "--head",
            "--port",
            str(ray_cluster.port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(temp_dir),
        )
        ray_cluster.wait_for_nodes(1)
        ray_cluster.start_node("--address", ray_cluster.address)
        ray_cluster.wait_for_nodes(2)
        yield ray_cluster
    finally:
        ray_cluster.stop()


def test_ray_batch_survives_a_killed_worker_and_matches_by_hand(
    cluster: Cluster, tmp_path: Path
) -> None:
    plan = load_plan(write_plan(tmp_path))
    out = tmp_path / "out"
    expected = by_hand(out)
    marker = Path(cluster.env[HOLD_ENV].split("=", 1)[1])
    result: dict[str, BatchSummary | BaseException] = {}

    def run() -> None:
        try:
            result["summary"] = run_batch(plan, ray_address=cluster.address)
        except BaseException as exc:
            result["summary"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 180
    while not marker.is_file():
        assert runner.is_alive(), f"the batch ended before the held step: {result}"
        assert time.monotonic() < deadline, "the held quantize step never started"
        time.sleep(0.2)
    held = json.loads(marker.read_text(encoding="utf-8"))
    target = Path(held["output"])
    assert target.name.endswith(".partial") and target.exists()  # mid-write
    group = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == held["pgid"]]
    assert held["pid"] in [p.pid for p in group]
    os.killpg(held["pgid"], signal.SIGKILL)  # the worker, and llama-quantize with it
    psutil.wait_procs(group, timeout=30)
    assert not psutil.pid_exists(held["pid"]) or psutil.Process(held["pid"]).status() == "zombie"

    runner.join(timeout=240)
    assert not runner.is_alive(), "the batch did not finish after the kill"
    summary = result["summary"]
    assert isinstance(summary, BatchSummary), summary
    assert summary.ok, summary.failed_models
    statuses = {o.step: o.status for o in summary.outcomes}
    assert set(statuses.values()) == {"built"} and len(statuses) == 3 * 5
    assert batch_digests(out) == expected  # the retried step too
    assert partial_files(out) == []
    assert len({o.node for o in summary.outcomes}) >= 1

    again = run_batch(plan, ray_address=cluster.address)
    assert {o.status for o in again.outcomes} == {"up to date"}
    assert batch_digests(out) == expected


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
