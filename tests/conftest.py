"""Shared fixtures: small generated datasets, built fresh in each test's tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# Nothing in the suite may reach a model hub or an update check.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray 2.60 turns token auth on for a cluster whenever ~/.ray/auth_token exists (any earlier local
# ray.init() writes one), and a client given only an address then fails with InvalidAuthToken.
# The test clusters listen on 127.0.0.1 only: run them, and their clients, without auth.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray turns a node address of 127.0.0.1 into the machine's outward address (its
# resolve_ip_for_localhost), and its processes then connect to each other there. Tests connect
# to 127.0.0.0/8 only: every test cluster, the ray_head fixture's and the local ones that
# `pipeline.recaption.init_ray` starts, runs on 127.0.0.2, which Ray keeps as given.
RAY_NODE_IP = "127.0.0.2"
os.environ.setdefault("LONGCAP_RAY_NODE_IP", RAY_NODE_IP)


@pytest.fixture
def sample_manifest(tmp_path):
    """A 24-image manifest with two pretend models, plus three bad rows."""
    from toyworld.sample_data import make_sample

    return make_sample(tmp_path / "sample", n=24, size=48, seed=1)


@pytest.fixture
def built_shards(tmp_path, sample_manifest):
    """Shards assembled from `sample_manifest`, 10 samples per shard."""
    from shards.assemble import AssembleConfig, assemble

    out = tmp_path / "shards"
    assemble(sample_manifest, out, AssembleConfig(shard_size=10))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The two tiny VLMs `longcap tiny-models` makes (built once per test session)."""
    pytest.importorskip("vllm")
    from toyworld.tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("models"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_job_agent(ray_bin: Path, dashboard: str, env: dict, head, deadline: float) -> None:
    """Submit a no-op job until the head's job agent takes it: the dashboard answers before the
    agent has registered, and a submission then fails with "No available agent to submit job"
    (seen on a loaded 2-core machine)."""
    cmd = [str(ray_bin), "job", "submit", "--address", dashboard, "--", sys.executable, "-c", "0"]
    while True:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            return
        out = r.stdout + r.stderr
        if "No available agent" not in out or head.poll() is not None or time.time() > deadline:
            head.kill()
            pytest.fail(f"ray head's job agent did not come up: {out[-2000:]}")
        time.sleep(2)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.2 (dashboard on 127.0.0.1) with free ports, ended
    after the session.

    --block keeps the head in one process we own, so ending it stops only this cluster (a
    `ray stop` would stop every Ray of the user)."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    port, dash = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--num-cpus", "4", "--port", str(port),
        "--node-ip-address", RAY_NODE_IP, "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dash), "--temp-dir", str(temp), "--disable-usage-stats",
        # Ray's fixed default ports (dashboard agent 52365, ...) may be held by another Ray on
        # the machine; its job agent then never comes up ("No available agent").
        "--dashboard-agent-listen-port", str(_free_port()),
        "--dashboard-agent-grpc-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()),
        "--runtime-env-agent-port", str(_free_port()),
        "--ray-client-server-port", str(_free_port()),
    ]  # fmt: skip
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    dashboard = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{dashboard}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # it answers (Ray 2.60 asks for its auth token): the job API is up
        except OSError:
            if head.poll() is not None or time.time() > deadline:
                head.kill()
                pytest.fail(f"ray head did not start: {(temp / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
    _wait_for_job_agent(ray_bin, dashboard, env, head, time.time() + 120)
    yield {"address": f"{RAY_NODE_IP}:{port}", "dashboard": dashboard, "env": env}
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    log.close()
    shutil.rmtree(temp, ignore_errors=True)


# moto's S3 server on 127.0.0.1 (session) and a fresh bucket per test: tests/s3_server.py.
from tests.s3_server import s3_bucket, s3_server  # noqa: E402, F401
