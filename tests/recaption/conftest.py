"""Fixtures for the recaption tests: tiny models, small input shards, a Ray head on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_input_shards(root: Path, shards: int = 3, per_shard: int = 6) -> Path:
    """img2dataset-style shards; shard 00001 holds a corrupt image and a failed download."""
    from tests.shards.helpers import jpeg_bytes, write_i2d_shard

    for s in range(shards):
        ok = [
            {
                "key": f"{s:05d}{i:04d}",
                "url": f"http://127.0.0.1/{s}/{i}.jpg",
                "caption": f"image {i} of shard {s}",
                "jpg": jpeg_bytes(color=(40 * i % 256, 30 * s % 256, 120), size=(64, 48)),
            }
            for i in range(per_shard)
        ]
        failed = []
        if s == 1:
            ok[2]["jpg"] = b"\xff\xd8\xff this is not a jpeg"
            failed = [
                {
                    "key": f"{s:05d}9999",
                    "url": "http://127.0.0.1/404.jpg",
                    "status": "failed_to_download",
                    "error": "HTTP Error 404: Not Found",
                }
            ]
        write_i2d_shard(root, f"{s:05d}", ok, failed)
    return root


@pytest.fixture
def input_shards(tmp_path):
    return make_input_shards(tmp_path / "in")


def write_config(path: Path, input_dir: Path, output: Path, models: dict, **extra) -> Path:
    import yaml

    cfg = {
        "input": str(input_dir),
        "output": str(output),
        "models": [
            {
                "name": name,
                "family": family,
                "path": str(model_path),
                "prompts": ["Describe the image in detail.", "What is in this picture?"],
                "max_tokens": 24,
                "batch_size": 4,
            }
            for name, (family, model_path) in models.items()
        ],
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with free ports, ended after the session.

    --block keeps the head in one process we own, so ending it stops only this cluster (a
    `ray stop` would stop every Ray of the user)."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    port, dash = _free_port(), _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--num-cpus", "4", "--port", str(port),
        "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dash), "--temp-dir", str(temp), "--disable-usage-stats",
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
    yield {"address": f"127.0.0.1:{port}", "dashboard": dashboard, "env": env}
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    log.close()
    shutil.rmtree(temp, ignore_errors=True)
