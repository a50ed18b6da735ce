"""Distributed ingest (`ingest.distributor: ray`): URL shards downloaded by Ray tasks, on a local
Ray here (tests/pipeline/test_multinode.py runs it over several nodes).

Against the loopback image server, a build whose downloads run as Ray tasks is killed while it
downloads and run again: the rerun skips the shards finished before the kill and ends with the
same dataset, row for row, as a build that downloads on one machine with img2dataset's processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.pipeline.stub_build import (
    check_build,
    dataset_rows,
    end_session,
    run_to_end,
    start,
    stub_model,
    tail,
    write_build_config,
)

N_IMAGES = 40  # + 4 bad rows that reach img2dataset = 44 rows to download
PER_SHARD = 8
N_SHARDS = 6


@pytest.fixture(scope="module")
def build_env():
    """The session's environment with a Ray temp folder of this module's own, so that each build
    starts a local Ray of its own (and never joins one of the user's)."""
    ray_tmp = tempfile.mkdtemp(prefix="lcdi", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": ray_tmp}
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def url_list(tmp_path_factory):
    from toyworld.loopback import make_url_list, serve

    root = tmp_path_factory.mktemp("urls")
    with serve(root / "www") as base:
        yield make_url_list(root, base, n=N_IMAGES, bad_rows=True)


@pytest.mark.slow
def test_distributed_ingest_resumes_after_a_kill(url_list, build_env, tmp_path):
    ref_out = tmp_path / "ref"
    ref_cfg = write_build_config(
        tmp_path / "ref.yaml", url_list, ref_out, [stub_model()], PER_SHARD
    )
    log = tmp_path / "build.log"
    assert run_to_end("pipeline.build", ref_cfg, build_env, log) == 0, tail(log)
    check_build(ref_out, N_SHARDS)

    out = tmp_path / "dist"
    cfg = write_build_config(
        tmp_path / "dist.yaml", url_list, out, [stub_model()], PER_SHARD, distributor="ray"
    )
    stats = out / "ingest" / "shards"
    proc = start("pipeline.build", cfg, build_env, log)
    killed_at = None
    try:
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 300:
            done = sorted(stats.glob("*_stats.json"))
            if 0 < len(done) < N_SHARDS:
                killed_at = {p.name: p.stat().st_mtime_ns for p in done}
                break
            time.sleep(0.02)
    finally:
        end_session(proc)  # SIGKILL: the build, img2dataset's driver, their Ray
    assert killed_at is not None, f"the build was not caught mid-download: {tail(log)}"
    # (A shard may have finished between the look and the kill: count what the kill left.)
    killed_at = {p.name: p.stat().st_mtime_ns for p in stats.glob("*_stats.json")}
    assert len(killed_at) < N_SHARDS

    assert run_to_end("pipeline.build", cfg, build_env, log) == 0, tail(log)
    check_build(out, N_SHARDS)  # with its conservation checks
    assert dataset_rows(out) == dataset_rows(ref_out)
    keys = [row[0] for rows in dataset_rows(out).values() for row in rows]
    assert len(keys) == len(set(keys))
    # Resume: the shards finished before the kill were not downloaded again.
    for name, mtime in killed_at.items():
        assert (stats / name).stat().st_mtime_ns == mtime, name
    tasks = json.loads((out / "ingest" / "ingest_tasks.json").read_text())["shards"]
    # Every shard not finished before the kill was downloaded by a Ray task of the rerun.
    rest = {f"{i:05d}" for i in range(N_SHARDS)} - {n[:5] for n in killed_at}
    assert rest <= set(tasks), tasks
    assert all(t["ok"] and t["node"] for t in tasks.values()), tasks


def test_distributor_ray_runs_the_cluster_entry_point_with_the_policy(tmp_path, monkeypatch):
    """`distributor: ray` starts pipeline.ingest_ray (not the one-machine entry point) with the
    cluster's address and, for every shard task, the URL policy in its environment."""
    from pipeline import ingest
    from pipeline.ingest_ray import SETTINGS_ENV
    from pipeline.url_policy import POLICY_ENV

    seen = {}

    def fake_popen(cmd, **kwargs):
        seen.update(cmd=cmd, **kwargs)
        return subprocess.Popen(["true"])

    monkeypatch.setattr(ingest, "popen_tied", fake_popen)
    cfg = ingest.IngestConfig(
        url_list="u.csv", distributor="ray", cpus_per_shard=0.5, allowed_networks=["10.0.0.0/8"]
    )
    with pytest.raises(ValueError, match="ingest.distributor"):
        ingest.start_ingest(cfg, tmp_path, [])
    ingest.start_ingest(cfg, tmp_path, [], ray_address="127.0.0.2:6379").wait()
    assert seen["cmd"][:3] == [sys.executable, "-m", "pipeline.ingest_ray"]
    assert seen["cmd"][seen["cmd"].index("--distributor") + 1] == "ray"
    settings = json.loads(seen["env"][SETTINGS_ENV])
    assert settings["address"] == "127.0.0.2:6379" and settings["cpus_per_shard"] == 0.5
    policy = json.loads(settings["env"][POLICY_ENV])
    assert policy == json.loads(seen["env"][POLICY_ENV]) and "10.0.0.0/8" in json.dumps(policy)


@pytest.mark.parametrize(
    "field, value, message",
    [("distributor", "spark", "must be one of"), ("cpus_per_shard", 0, "must be > 0")],
)
def test_bad_distributor_fields_name_the_field(field, value, message):
    from pipeline.build import _ingest_config
    from pipeline.config_loader import ConfigError

    with pytest.raises(ConfigError, match=f"build.yaml: ingest.{field}: {message}"):
        _ingest_config({"url_list": "u.csv", field: value}, "build.yaml: ingest")
