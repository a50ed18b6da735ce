"""`longcap train --shards s3://...` (slow): training reads its shards from a bucket on moto's
S3 server (127.0.0.1), through DataLoader worker processes, and learns the same as from a folder."""

from __future__ import annotations

import json
import os
import shutil
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


def test_run_folder_in_a_bucket_resumes_the_same_loss_curve(
    shards_dir, tmp_path, s3_bucket, monkeypatch
):
    """--out s3://...: checkpoints, config and log land in the bucket after every checkpoint; a
    run stopped after 3 steps resumes from the bucket (a fresh mirror) to the local curve."""
    from shards import storage
    from tests.train_hooks.test_train import losses, small
    from train_hooks.checkpoints import RemoteRunError, load_checkpoint_file
    from train_hooks.evaluate import load_checkpoint
    from train_hooks.train import train

    monkeypatch.setenv("LONGCAP_STAGING_DIR", str(tmp_path / "stage"))
    kw = dict(steps=6, num_workers=0, warmup=2, save_every=3, keep_checkpoints=1)
    train(small(shards_dir, tmp_path / "full", **kw))
    run = f"{s3_bucket}/runs/r1"
    first = train(small(shards_dir, run, stop_after=3, **kw))
    assert first["checkpoint"] == f"{run}/checkpoints/step_0000003.pt"
    names = sorted(p.path.split("/r1/")[1] for p in storage.list_files(run, recursive=True))
    assert names == ["checkpoints/step_0000003.pt", "config.json", "log.jsonl"]
    with pytest.raises(RemoteRunError, match="--resume"):
        train(small(shards_dir, run, **kw))
    shutil.rmtree(tmp_path / "stage")  # resume on another machine: nothing local
    train(small(shards_dir, run, **kw), resume=True)
    local = tmp_path / "from-bucket"
    local.mkdir()
    storage.download(f"{run}/log.jsonl", local / "log.jsonl")
    full, resumed = losses(tmp_path / "full"), losses(local)
    assert len(full) == len(resumed) == 6
    assert max(abs(a - b) for a, b in zip(full, resumed, strict=True)) <= 1e-6
    # keep_checkpoints=1: the bucket keeps the newest only; it loads with weights_only.
    cks = [p.name for p in storage.list_files(f"{run}/checkpoints")]
    assert cks == ["step_0000006.pt"]
    assert load_checkpoint_file(f"{run}/checkpoints/step_0000006.pt")["step"] == 6
    _model, _tok, ck = load_checkpoint(run)  # `longcap eval --checkpoint s3://.../r1`
    assert ck["step"] == 6 and not storage.exists(f"{run}/.longcap.lock")
