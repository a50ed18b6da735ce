"""`longcap train --shards s3://...` (slow): training reads its shards from a bucket on moto's
S3 server (127.0.0.1), through DataLoader worker processes, and learns the same as from a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "log.jsonl").read_text().splitlines()]


def test_cli_train_reads_shards_from_s3(shards_dir, tmp_path, s3_bucket, s3_server):
    from shards import storage

    remote = f"{s3_bucket}/train-shards"
    for p in storage.list_files(shards_dir):
        if not p.name.startswith("."):
            storage.upload(p, f"{remote}/{p.name}")
    argv = ["--preset", "tiny", "--steps", "2", "--batch-size", "8", "--workers", "1"]
    argv += ["--context-length", "64", "--no-progress"]
    runs = {}
    for name, shards in (("local", str(shards_dir)), ("s3", remote)):
        runs[name] = tmp_path / name
        cmd = [sys.executable, "-m", "pipeline.cli", "train", "--shards", shards]
        cmd += ["--out", str(runs[name]), *argv]
        env = {**os.environ, **s3_server["env"]}
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"longcap train: {shards} ->" in r.stdout
    assert _losses(runs["s3"]) == _losses(runs["local"])
