"""A Ray cluster of several nodes on one machine, for the multi-node tests.

Each node is one `ray start --block` process in a session of its own, on its own loopback
address (head 127.0.0.2, workers 127.0.0.3, 127.0.0.4, ...: Ray keeps a 127.0.0.x address other
than 127.0.0.1 as given, tests/conftest.py) with its own ports, so that killing a node's process
group loses that node and nothing else, as a machine lost from a real cluster would. Only the
processes these nodes started are ever ended (their sessions), never another Ray of the user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY_BIN = Path(sys.executable).parent / "ray"
HEAD_IP = "127.0.0.2"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`: a node's raylet, its workers (which put
    themselves in process groups of their own but stay in the session), its agents."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (a whole node, as when a machine is lost)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    ip: str
    proc: subprocess.Popen
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Lose the node: its whole session (raylet, object store, workers) at once."""
        kill_session(self.proc.pid)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class LocalCluster:
    """A head and worker nodes; `address` is the head's GCS (ip:port)."""

    address: str
    dashboard: str
    env: dict[str, str]
    temp: Path
    nodes: list[Node] = field(default_factory=list)

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def stop(self) -> None:
        """End every process of every node, workers first; wait until none is left."""
        for node in reversed(self.nodes):
            if node.alive:
                node.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node
        deadline = time.time() + 30
        while time.time() < deadline and any(session_pids(n.proc.pid) for n in self.nodes):
            time.sleep(0.3)
        for node in self.nodes:
            kill_session(node.proc.pid)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _start_node(args: list[str], ip: str, env: dict[str, str], log: Path) -> Node:
    ports = [
        "--node-manager-port", str(free_port(ip)), "--object-manager-port", str(free_port(ip)),
        "--metrics-export-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
    ]  # fmt: skip
    cmd = [str(RAY_BIN), "start", "--block", "--node-ip-address", ip, *ports, *args]
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Node(ip, proc, log)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    """How many nodes the head counts as alive (asked from a child, so that this process never
    joins the cluster)."""
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        return int(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def start_cluster(
    head_args: list[str], worker_args: list[list[str]], env_extra: dict[str, str] | None = None
) -> LocalCluster:
    """Start a head (`head_args`, e.g. ["--num-cpus", "1"]) and one worker node per entry of
    `worker_args`; return once the head counts them all alive. On failure everything started
    is stopped and RuntimeError carries the logs' tails."""
    temp = Path(tempfile.mkdtemp(prefix="lcmn", dir="/tmp"))  # short: Ray's socket paths
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": str(temp),
        **(env_extra or {}),
    }
    port, dash = free_port(HEAD_IP), free_port()
    cluster = LocalCluster(f"{HEAD_IP}:{port}", f"http://127.0.0.1:{dash}", env, temp)
    try:
        head = _start_node(
            [
                "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dash), "--ray-client-server-port", str(free_port()),
                "--temp-dir", str(temp / "ray"), "--disable-usage-stats", *head_args,
            ],
            HEAD_IP, env, temp / "head.log",
        )  # fmt: skip
        cluster.nodes.append(head)
        _wait_alive(cluster, 1)
        for i, args in enumerate(worker_args):
            ip = f"127.0.0.{3 + i}"
            node = _start_node(
                ["--address", cluster.address, *args], ip, env, temp / f"worker{i}.log"
            )
            cluster.nodes.append(node)
            # One at a time: raylets starting together on a busy machine miss Ray's 30 s
            # registration window ("The current node timed out during startup").
            _wait_alive(cluster, len(cluster.nodes))
    except BaseException:
        logs = "\n".join(
            f"--- {n.log.name}\n{n.log.read_text(errors='replace')[-1500:]}" for n in cluster.nodes
        )
        cluster.stop()
        raise RuntimeError(f"the test cluster did not come up:\n{logs}") from None
    return cluster


def _wait_alive(cluster: LocalCluster, n: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        dead = [node.log.name for node in cluster.nodes if not node.alive]
        if dead:
            raise RuntimeError(f"ray start exited: {dead}")
        if _alive_nodes(cluster.address, cluster.env) >= n:
            return
        if time.time() > deadline:
            raise RuntimeError(f"{n} nodes not alive after {timeout:.0f}s")
        time.sleep(1)


def wait_node_dead(cluster: LocalCluster, alive: int, timeout: float = 120) -> float:
    """Seconds until the head counts only `alive` nodes alive (it noticed a lost node)."""
    t0 = time.time()
    while _alive_nodes(cluster.address, cluster.env) > alive:
        if time.time() - t0 > timeout:
            raise RuntimeError(f"the head still counts more than {alive} nodes after {timeout}s")
        time.sleep(1)
    return time.time() - t0
