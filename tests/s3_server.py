"""A real S3 API on 127.0.0.1 for the tests: moto's server in a subprocess, one per session.

`s3_server` starts `python -m moto.server` on a free loopback port and points the AWS
environment at it for the session (restored after): fixed test keys and region, the endpoint
in AWS_ENDPOINT_URL_S3, and every other place the AWS SDK might look for credentials or a region
turned off: AWS_EC2_METADATA_DISABLED=true (no 169.254.169.254), config and credentials files
pointed at nothing, and no proxy for loopback. `s3_bucket` gives each test a fresh bucket URI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_test_env(endpoint: str, empty_file: str) -> dict[str, str]:
    """The AWS environment that confines every S3 client (pyarrow's, boto3's) to `endpoint`."""
    return {
        "AWS_ACCESS_KEY_ID": "longcap-test",
        "AWS_SECRET_ACCESS_KEY": "longcap-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": empty_file,
        "AWS_SHARED_CREDENTIALS_FILE": empty_file,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def start_moto(port: int, log: Path) -> subprocess.Popen:
    """moto's S3 server on 127.0.0.1:`port`, waited for until it answers."""
    out = open(log, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"moto server did not start: {tail}") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port with the AWS environment pointed at it."""
    # Find moto without importing it here: moto.server imports Flask, whose module-level proxies
    # (flask.current_app, ...) raise RuntimeError on attribute access outside an app, and vLLM's
    # engine start scans every module in sys.modules (vllm/triton_utils/dispatcher.py), so an
    # engine loaded later in this process fails ("Working outside of application context").
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto is not installed (the dev extra)")
    tmp = tmp_path_factory.mktemp("moto")
    port = _free_port()
    proc = start_moto(port, tmp / "moto.log")
    empty = tmp / "empty-aws-config"
    empty.write_text("")
    env = s3_test_env(f"http://127.0.0.1:{port}", str(empty))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from shards import storage

    storage.configure(None)  # drop filesystems made under another environment
    yield {"endpoint": env["AWS_ENDPOINT_URL_S3"], "env": env}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.configure(None)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket for one test: its URI `s3://NAME`."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_server["endpoint"], name)
    return f"s3://{name}"
