"""Builds with the stub caption engine, for the distributed-ingest and multi-node tests.

The stub (tests/recaption/stub_engine.py) loads no model, so a build's time is img2dataset's and
Ray's: these tests exercise where downloads and units run, not what a model writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]


def stub_model(name: str = "stub", engine: str = "HangingEngine", **extra: Any) -> dict:
    return {
        "name": name,
        "family": "llava-1.5",
        "path": "stub/model",  # shaped like a hub id: the stub never reads it
        "engine": f"tests.recaption.stub_engine:{engine}",
        "batch_size": 4,
        **extra,
    }


def write_build_config(
    path: Path, url_list: Path, out: Path, models: list[dict], per_shard: int, **ingest: Any
) -> Path:
    cfg = {
        "output": str(out),
        "ingest": {
            "url_list": str(url_list),
            "image_size": 64,
            "number_sample_per_shard": per_shard,
            "threads": 4,
            "allowed_networks": ["127.0.0.1/32"],  # the test server; refused by default
            **ingest,
        },
        "models": models,
        "progress": False,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(
    module: str, cfg: Path, env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen:
    """`python -m <module> --config <cfg>` in its own session (so that it and all it starts can
    be killed together), as a user runs it."""
    with open(log, "ab") as f:
        f.write(f"\n===== {module} started {time.strftime('%X')} =====\n".encode())
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(cfg)],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def end_session(proc: subprocess.Popen, kill: bool = True, grace: float = 30.0) -> None:
    """SIGKILL the process group (if `kill`), reap it, and after `grace` seconds SIGKILL what is
    left of its session (Ray's workers leave the group, not the session)."""
    from tests.pipeline.ray_cluster import kill_session, session_pids

    if kill:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + grace
    while time.time() < deadline and session_pids(proc.pid):
        time.sleep(0.2)
    kill_session(proc.pid)


def run_to_end(module: str, cfg: Path, env: dict[str, str], log: Path, timeout: float = 420) -> int:
    proc = start(module, cfg, env, log)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{module} did not finish in {timeout}s; log: {tail(log)}") from None
    finally:
        end_session(proc, kill=proc.poll() is None)


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:]


def dataset_rows(out: Path) -> dict[str, list[tuple]]:
    """Per output shard of a build, (key, status, caption, captions per model) in key order
    (img2dataset writes a shard's rows in the order its downloads finish)."""
    result = {}
    shards = out / "shards"
    for path in sorted(shards.glob("*.parquet")) + sorted(shards.glob("rejected/*.parquet")):
        cols = ["key", "status", "caption", "long_captions"]
        rows = [
            (
                r["key"],
                r["status"],
                r["caption"],
                tuple((lc["model"], lc["text"], lc["status"]) for lc in r["long_captions"] or ()),
            )
            for r in pq.read_table(path, columns=cols).to_pylist()
        ]
        result[str(path.relative_to(out))] = sorted(rows)
    return result


def check_build(out: Path, shards: int) -> dict:
    """The build report says complete (its conservation checks passed) with `shards` shards."""
    report = json.loads((out / "build_report.json").read_text())
    assert report["complete"] is True, report["problems"]
    assert report["shards"] == shards
    return report
