"""A Ray cluster of three nodes on this machine: units and downloads spread over both workers,
and a worker node lost in the middle of a recaption job.

The head (127.0.0.2) has no CPUs, so it only runs the drivers; each worker (127.0.0.3, .4) has 5
CPUs, room for one engine actor of 3 CPUs (never two on one node) and two tasks (downloads,
decodes) beside it; a lost worker's actor finds no room on the other. The
caption engine is the stub (tests/recaption/stub_engine.py), slowed so that units last seconds.
Losing a node kills its whole session (raylet, object store, workers), as when a machine is lost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.pipeline.ray_cluster import start_cluster
from tests.pipeline.stub_build import (
    check_build,
    end_session,
    run_to_end,
    start,
    stub_model,
    tail,
    write_build_config,
)

WORKERS = ("127.0.0.3", "127.0.0.4")


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    c = start_cluster(["--num-cpus", "0"], [["--num-cpus", "5"], ["--num-cpus", "5"]])
    try:
        yield c
    finally:
        c.stop()


def _env(cluster) -> dict[str, str]:
    return {**cluster.env, "RAY_ADDRESS": cluster.address}


@pytest.mark.slow
def test_downloads_and_units_run_on_both_workers(cluster, tmp_path):
    from toyworld.loopback import make_url_list, serve

    with serve(tmp_path / "www") as base:
        urls = make_url_list(tmp_path, base, n=40, bad_rows=True)  # 44 rows to download
        out = tmp_path / "out"
        model = stub_model(
            engine="SlowEngine", replicas=2, cpus_per_replica=3, engine_kwargs={"seconds": 0.5}
        )
        cfg = write_build_config(
            tmp_path / "build.yaml", urls, out, [model], per_shard=4, distributor="ray"
        )
        log = tmp_path / "build.log"
        assert run_to_end("pipeline.build", cfg, _env(cluster), log) == 0, tail(log)
    check_build(out, 11)
    tasks = json.loads((out / "ingest" / "ingest_tasks.json").read_text())["shards"]
    download_nodes = {t["node"] for t in tasks.values()}
    units = json.loads((out / "recaption" / "recaption_report.json").read_text())
    unit_nodes = units["models"]["stub"]["units_by_node"]
    print(f"downloads per shard: {tasks}\nunits by node: {unit_nodes}")
    assert download_nodes == set(WORKERS), tasks
    assert set(unit_nodes) == set(WORKERS), unit_nodes
    assert sum(unit_nodes.values()) == 11


def _keys(path: Path) -> list[str]:
    return pq.read_table(path, columns=["key"]).column("key").to_pylist()


@pytest.mark.slow
def test_a_worker_node_lost_mid_run(cluster, tmp_path):
    """Kill one worker node while its units run: the job still completes, every input key is
    captioned or failed exactly once, and no unit is lost."""
    from tests.recaption.conftest import make_input_shards

    n_shards = 10
    inp = make_input_shards(tmp_path / "in", shards=n_shards, per_shard=6)
    out = tmp_path / "out"
    model = stub_model(
        engine="SlowEngine",
        replicas=2,
        cpus_per_replica=3,
        batch_size=3,
        engine_kwargs={"seconds": 1.0},  # 2 calls a unit: about 2 s
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"input": str(inp), "output": str(out), "models": [model], "progress": False}
        )
    )
    log = tmp_path / "recaption.log"
    lost = cluster.workers[-1]
    units = out / "captions" / "stub"
    proc = start("pipeline.recaption", cfg, _env(cluster), log)
    timeline = {}
    try:
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 300 and not timeline:
            if len(list(units.glob("*.parquet"))) >= 2:
                lost.kill()
                t_kill = time.time()
                timeline = {"killed_after_s": round(t_kill - t0, 1)}
            time.sleep(0.05)
        assert timeline, f"the job ended before a node could be lost: {tail(log)}"
        rc = proc.wait(timeout=300)
        timeline["job_ended_after_s"] = round(time.time() - t0, 1)
    finally:
        end_session(proc, kill=proc.poll() is None)
    # When each unit was written, from the kill (for docs/parts/cluster.md; nothing timed here
    # is asserted).
    timeline["units_written_s"] = sorted(
        round(p.stat().st_mtime - t_kill, 1) for p in units.glob("*.parquet")
    )
    print(f"node lost: {timeline}")
    assert rc == 0, tail(log)
    report = json.loads((out / "recaption_report.json").read_text())
    m = report["models"]["stub"]
    assert report["complete"] is True
    assert m["units_done"] == n_shards and m["units_failed"] == []
    assert sum(m["units_by_node"].values()) == n_shards
    print(f"units by node: {m['units_by_node']}")
    # Every input key, once, in its shard's unit (the corrupt image and img2dataset's failed
    # download of shard 00001 as failure rows).
    for s in range(n_shards):
        want = sorted(_keys(inp / f"{s:05d}.parquet"))
        got = _keys(units / f"{s:05d}.parquet")
        assert sorted(got) == want, s
    assert not list(units.glob("*.tmp*")), "temporary files left behind"
