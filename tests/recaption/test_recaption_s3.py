"""Recaption with input shards and output in a bucket (moto's S3 server on 127.0.0.1), then the
dataset assembled from the bucket into the bucket and `longcap stats s3://...` on it (slow: a
local Ray; the stand-in engine, no vLLM)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from shards import storage
from tests.recaption.conftest import make_input_shards

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def test_recaption_assemble_and_stats_all_in_the_bucket(tmp_path, s3_bucket, s3_server):
    local_in = make_input_shards(tmp_path / "in", shards=3)
    src, recap, ds = f"{s3_bucket}/in", f"{s3_bucket}/recaption", f"{s3_bucket}/shards"
    for p in storage.list_files(local_in):
        storage.upload(p, f"{src}/{p.name}")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    cfg = {
        "input": src,
        "output": recap,
        "progress": False,
        "models": [
            {
                "name": "stub",
                "family": "llava-1.5",
                "path": str(model),
                "engine": "tests.recaption.stub_engine:HangingEngine",
            }
        ],
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    # A local Ray of its own (short temp path for its sockets), started by the job with this
    # environment, so that its workers reach the bucket too.
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = {**os.environ, **s3_server["env"], "RAY_TMPDIR": ray_tmp}
    try:
        _run(["pipeline.recaption", "--config", str(tmp_path / "run.yaml")], env)
        units = storage.list_files(f"{recap}/captions/stub", "*.parquet")
        assert [p.name for p in units] == ["00000.parquet", "00001.parquet", "00002.parquet"]
        keys = [
            k for p in units for k in pq.read_table(storage.random_access(p))["key"].to_pylist()
        ]
        assert len(keys) == len(set(keys)) == 3 * 6 + 1  # + shard 00001's failed download
        report = json.loads(storage.as_path(f"{recap}/recaption_report.json").read_text())
        assert report["complete"] and report["models"]["stub"]["units_done"] == 3
        assert not storage.exists(f"{recap}/.longcap.lock")
        # A rerun finds every unit done in the bucket.
        _run(["pipeline.recaption", "--config", str(tmp_path / "run.yaml")], env)
        report = json.loads(storage.as_path(f"{recap}/recaption_report.json").read_text())
        assert report["models"]["stub"]["units_skipped"] == 3
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    cli = ["pipeline.cli", "shards", "--input", src, "--captions", recap, "--out", ds]
    _run(cli, env)
    stats = json.loads(_run(["pipeline.cli", "stats", ds, "--json"], env).stdout)
    assert stats["samples"] == 19 and stats["by_model"]["stub"]["texts"] == stats["images"]
