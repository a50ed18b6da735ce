"""Dataset shards on S3 (moto's server on 127.0.0.1): `longcap shards` writes them with marks
after data, a run killed mid-shard or between its data and its mark resumes there with every key
once, and `longcap stats` and the trainer's reader read them as they read a local folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import assemble as A
from shards import storage
from shards.dataset_stats import collect_stats

ROOT = Path(__file__).resolve().parents[2]


def _keys(folder) -> list[str]:
    """Every key of every shard Parquet in a folder or prefix, in shard order."""
    tables = [
        pq.read_table(storage.random_access(p), columns=["key"])
        for p in storage.list_files(folder, "*.parquet")
    ]
    return pa.concat_tables(tables)["key"].to_pylist()


def _names(folder) -> list[str]:
    return sorted(p.name for p in storage.list_files(folder) if not p.name.startswith("."))


def test_shards_written_to_s3_equal_local_ones(tmp_path, sample_manifest, s3_bucket):
    cfg = A.AssembleConfig(shard_size=10)
    local, remote = tmp_path / "local", f"{s3_bucket}/ds/shards"
    A.assemble(sample_manifest, local, cfg)
    res = A.assemble(sample_manifest, remote, cfg)
    assert res.samples_in == 27 and len(res.shards_written) == 3
    assert _names(remote) == _names(local)
    for name in ("00000.tar", "00001.parquet"):
        assert (storage.as_path(remote) / name).read_bytes() == (local / name).read_bytes()
    # The run lock object went with the run; nothing was left in the staging folder.
    assert not (storage.as_path(remote) / ".longcap.lock").exists()
    # Resume on S3: the marks say all is done.
    again = A.assemble(sample_manifest, remote, cfg)
    assert again.shards_skipped == 3 and again.samples_in == 0
    # Statistics and the trainer's reader see the same dataset in both places.
    assert collect_stats(remote).report() == collect_stats(local).report()


def test_trainer_reads_shards_from_s3(tmp_path, sample_manifest, s3_bucket):
    pytest.importorskip("torch")
    from train_hooks.data import list_shards, read_shard

    cfg = A.AssembleConfig(shard_size=10)
    local, remote = tmp_path / "local", f"{s3_bucket}/shards"
    A.assemble(sample_manifest, local, cfg)
    A.assemble(sample_manifest, remote, cfg)
    here, there = list_shards(local), list_shards(remote)
    assert [(s.name, s.count) for s in here] == [(s.name, s.count) for s in there]
    assert str(there[0].tar) == f"{remote}/00000.tar"
    for fmt in ("tar", "parquet"):
        a = [r for s in here for r in read_shard(s, fmt)]
        b = [r for s in there for r in read_shard(s, fmt)]
        assert len(a) == 24 and a == b


def test_shards_read_from_s3_as_input(tmp_path, sample_manifest, s3_bucket):
    """A prefix of shards is an input too (re-assembly from the bucket)."""
    cfg = A.AssembleConfig(shard_size=10)
    first = f"{s3_bucket}/first"
    A.assemble(sample_manifest, first, cfg)
    again = A.assemble(first, tmp_path / "again", cfg)
    assert again.samples_in == 27
    assert _keys(tmp_path / "again") == _keys(first)
    with pytest.raises(A.InputError, match="prefix of shards"):
        A.assemble(f"{s3_bucket}/first/00000_stats.json", tmp_path / "x", cfg)


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from shards import assemble as A, readers, storage

    where, manifest, out = sys.argv[1:4]
    if where == "mid_shard":  # SIGKILL while shard 00002 is being written (staged locally)
        real = readers.read_input
        def dying(path, *args):
            for i, s in enumerate(real(path, *args)):
                if i == 13:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield s
        A.read_input = dying
    else:  # SIGKILL after shard 00001's data objects are up, before its mark
        real = storage.upload
        def dying(local, dest):
            real(local, dest)
            if str(dest).endswith("00001.tar"):
                os.kill(os.getpid(), signal.SIGKILL)
        storage.upload = dying
    A.assemble(manifest, out, A.AssembleConfig(shard_size=5, batch_size=4))
    """
)


@pytest.mark.parametrize("where", ["mid_shard", "before_mark"])
def test_killed_run_resumes_on_s3(
    tmp_path, sample_manifest, s3_bucket, s3_server, where, monkeypatch
):
    cfg = A.AssembleConfig(shard_size=5, batch_size=4)
    ref = tmp_path / "ref"
    A.assemble(sample_manifest, ref, cfg)
    out = f"{s3_bucket}/killed"
    env = {**os.environ, **s3_server["env"], "LONGCAP_STAGING_DIR": str(tmp_path / "stage")}
    r = subprocess.run(
        [sys.executable, "-c", _KILLER, where, str(sample_manifest), out],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == -9, r.stderr[-2000:]
    marks = [p.name for p in storage.list_files(out, "*_stats.json")]
    assert marks == ["00000_stats.json", "00001_stats.json"][: 2 if where == "mid_shard" else 1]
    if where == "before_mark":  # data objects without their mark: not a finished shard
        assert {"00001.parquet", "00001.tar"} <= set(_names(out))
    # The killed run's lock object is still there: this host, pid gone, so it is taken over.
    assert (storage.as_path(out) / ".longcap.lock").exists()
    stage = tmp_path / "stage"
    left = list(stage.iterdir())
    assert len(left) == 1  # the shard in flight, staged when the run was killed
    monkeypatch.setenv("LONGCAP_STAGING_DIR", str(stage))
    res = A.assemble(sample_manifest, out, cfg)
    assert res.shards_skipped == len(marks)
    # The killed run's staging folder went with the rerun.
    assert not any(p in left for p in stage.iterdir())
    assert _names(out) == _names(ref)
    keys = _keys(out)
    assert keys == _keys(ref) and len(keys) == len(set(keys)) == 27
    assert collect_stats(out).report() == collect_stats(ref).report()


@pytest.mark.slow
def test_cli_shards_and_stats_on_s3(tmp_path, sample_manifest, s3_bucket, s3_server):
    """`longcap shards --out s3://...` then `longcap stats s3://...`, as a user types them."""
    env = {**os.environ, **s3_server["env"]}
    out = f"{s3_bucket}/cli"
    longcap = [sys.executable, "-m", "pipeline.cli"]
    r = subprocess.run(
        [*longcap, "shards", "--input", str(sample_manifest), "--out", out, "--shard-size", "10"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"statistics: longcap stats {out}" in r.stdout
    r = subprocess.run(
        [*longcap, "stats", out, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    local = tmp_path / "local"
    A.assemble(sample_manifest, local, A.AssembleConfig(shard_size=10))
    assert report["images"] == collect_stats(local).report()["images"]
