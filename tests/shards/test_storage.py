"""shards.storage: local paths and URIs behind one API, and object-store basics against moto's S3
server on 127.0.0.1 (tests/s3_server.py)."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shards import runlock, storage


def test_local_paths_stay_paths(tmp_path):
    assert storage.as_path(str(tmp_path)) == tmp_path
    assert storage.as_path(f"file://{tmp_path}") == tmp_path
    assert storage.as_path(tmp_path / "x") == tmp_path / "x"
    assert not storage.is_uri(str(tmp_path)) and not storage.is_uri(tmp_path)
    assert storage.is_uri("s3://b/p") and storage.is_uri("gs://b/p")
    assert storage.join(tmp_path, "a", "b.tar") == str(tmp_path / "a" / "b.tar")
    assert storage.join("s3://b/p", "00001.tar") == "s3://b/p/00001.tar"


def test_object_path_is_path_like():
    p = storage.ObjectPath("s3://bucket/run/shards/00012.parquet")
    assert (p.name, p.stem, p.suffix) == ("00012.parquet", "00012", ".parquet")
    assert str(p.parent) == "s3://bucket/run/shards"
    assert str(p.with_suffix(".tar")) == "s3://bucket/run/shards/00012.tar"
    assert str(p.with_name("00012_stats.json")) == "s3://bucket/run/shards/00012_stats.json"
    assert str(p.parent / "x") == "s3://bucket/run/shards/x"
    assert p == storage.ObjectPath("s3://bucket/run/shards/00012.parquet/")
    # Pickles as its URI: DataLoader workers and Ray tasks re-resolve it.
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(ValueError, match="no bucket"):
        storage.resolve("s3://")


def test_storage_config_names_the_bad_field():
    cfg = storage.storage_config_from({"endpoint_url": "http://127.0.0.1:9000", "region": "auto"})
    assert cfg.endpoint_url == "http://127.0.0.1:9000" and cfg.region == "auto"
    with pytest.raises(ValueError, match="credentials come from AWS_ACCESS_KEY_ID"):
        storage.storage_config_from({"secret_access_key": "x"}, "run.yaml: storage")
    with pytest.raises(ValueError, match="run.yaml: storage.request_timeout"):
        storage.storage_config_from({"request_timeout": -1}, "run.yaml: storage")


def test_s3_filesystem_takes_endpoint_region_and_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    storage.configure(None)
    fs = storage.s3_filesystem()
    assert fs.region == "eu-west-3"
    # The S3-specific endpoint wins over the generic one; the scheme is split off for pyarrow.
    assert "127.0.0.1:1" in repr(fs.__reduce__())
    storage.configure(storage.StorageConfig(endpoint_url="https://r2.example", region="auto"))
    fs = storage.s3_filesystem()
    assert fs.region == "auto" and "r2.example" in repr(fs.__reduce__())
    storage.configure(None)


def test_an_fsspec_filesystem_works_too():
    """Schemes pyarrow lacks go through fsspec (memory:// here)."""
    p = storage.as_path("memory://longcap-test/a/b.json")
    storage.write_bytes(p, b'{"x": 1}')
    assert p.exists() and json.loads(p.read_text()) == {"x": 1}
    assert [q.name for q in storage.list_files("memory://longcap-test/a")] == ["b.json"]
    storage.delete(p)
    assert not p.exists()


def test_s3_objects_round_trip(s3_bucket):
    p = storage.as_path(f"{s3_bucket}/run/a/x.json")
    storage.write_bytes(p, b"hello")
    assert p.exists() and p.is_file() and p.read_text() == "hello"
    assert storage.as_path(f"{s3_bucket}/run/a").is_dir()
    assert p.stat().st_size == 5
    assert [str(q) for q in storage.list_files(f"{s3_bucket}/run", recursive=True)] == [str(p)]
    assert list(storage.as_path(f"{s3_bucket}/run").glob("*.json")) == []  # not recursive
    with storage.open_input(p) as f:
        assert f.read() == b"hello"
    storage.delete(p)
    assert not p.exists()
    with pytest.raises(FileNotFoundError):
        storage.as_path(f"{s3_bucket}/nothing").read_bytes()


def test_mark_is_written_only_after_every_data_object(s3_bucket, tmp_path, monkeypatch):
    out = storage.as_path(f"{s3_bucket}/unit")
    files = []
    for name in ("00000.parquet", "00000.tar"):
        (tmp_path / name).write_bytes(name.encode())
        files.append((tmp_path / name, out / name))
    real = storage.upload

    def failing(local, dest):
        if str(dest).endswith(".tar"):
            raise OSError("connection reset during the upload")
        real(local, dest)

    monkeypatch.setattr(storage, "upload", failing)
    with pytest.raises(OSError):
        storage.write_marked(files, out / "00000_stats.json", b"{}")
    assert (out / "00000.parquet").exists() and not (out / "00000_stats.json").exists()
    monkeypatch.setattr(storage, "upload", real)
    storage.write_marked(files, out / "00000_stats.json", b"{}")
    assert sorted(p.name for p in out.glob("*")) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
    ]
    assert (out / "00000.tar").read_bytes() == b"00000.tar"


def test_runlock_on_s3_is_a_lock_object(s3_bucket):
    out = f"{s3_bucket}/run"
    lock = storage.as_path(out) / runlock.LOCK_NAME
    runlock.lock_output(out, "longcap shards")
    try:
        holder = json.loads(lock.read_text())
        assert holder["token"] == runlock.RUN_TOKEN and holder["run"] == "longcap shards"
        runlock.lock_output(out, "again")  # re-entrant in one process
        runlock.unlock_output(out)
        assert lock.exists()
    finally:
        runlock.unlock_output(out)
    assert not lock.exists()

    # Another host's live-looking lock refuses, naming the holder and the object to delete.
    other = {"pid": 1, "host": "gpu-node-7", "run": "build", "token": "1-00000000"}
    lock.write_text(json.dumps(other))
    with pytest.raises(runlock.OutputLocked, match="gpu-node-7.*delete s3://"):
        runlock.lock_output(out, "longcap shards")
    # A killed run's lock on this host (its pid gone) is taken over.
    dead = {**other, "host": socket.gethostname(), "pid": 2**22 + 12345}
    lock.write_text(json.dumps(dead))
    runlock.lock_output(out, "longcap shards")
    assert json.loads(lock.read_text())["token"] == runlock.RUN_TOKEN
    runlock.unlock_output(out)


def test_no_aws_lookup_outside_loopback(s3_server):
    """The test environment pins every S3 setting, so no SDK default chain (IMDS at
    169.254.169.254, profile files) is consulted and every endpoint is loopback."""
    env = s3_server["env"]
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert env["AWS_ENDPOINT_URL_S3"].startswith("http://127.0.0.1:")
    assert Path(env["AWS_CONFIG_FILE"]).read_text() == ""
    fs = storage.s3_filesystem()
    assert fs.region == "us-east-1"
    assert "127.0.0.1" in repr(fs.__reduce__())


def test_build_url_list_read_from_s3(tmp_path, s3_bucket):
    """ingest.url_list may be an object: it is copied once into the work folder, then read as
    the local file is (the same rows, refusals and shards)."""
    from pipeline.ingest import IngestConfig, prepare_url_list

    lines = ["url,caption", "http://127.0.0.1:8000/a.jpg,a", "ftp://127.0.0.1/x.jpg,b"]
    lines += ["http://169.254.169.254/latest/meta-data/,c", "http://127.0.0.1:8000/a.jpg,dup"]
    local = tmp_path / "urls.csv"
    local.write_text("\n".join(lines) + "\n")
    storage.upload(local, f"{s3_bucket}/lists/urls.csv")
    nets = ["127.0.0.1/32"]
    here_cfg = IngestConfig(url_list=str(local), allowed_networks=nets)
    here = prepare_url_list(here_cfg, tmp_path / "a")
    remote = IngestConfig(url_list=f"{s3_bucket}/lists/urls.csv", allowed_networks=nets)
    there = prepare_url_list(remote, tmp_path / "b")
    assert here == there and there["rows"] == 4 and there["accepted"] == 1
    a, b = (pq.read_table(tmp_path / w / "rejected.parquet").to_pylist() for w in "ab")
    assert a == b
    with pytest.raises(ValueError, match="does not exist"):
        prepare_url_list(IngestConfig(url_list=f"{s3_bucket}/nope.csv"), tmp_path / "c")


def test_listed_paths_answer_from_the_listing(s3_bucket):
    """A path from a listing knows its type, size and time (no request per object); one that
    is deleted or rewritten asks the store again."""
    storage.write_bytes(f"{s3_bucket}/p/a.tar", b"12345")
    (listed,) = storage.as_path(f"{s3_bucket}/p").glob("*.tar")
    assert listed._listed is not None and listed.is_file() and listed.stat().st_size == 5
    listed.write_bytes(b"1234567")
    assert listed.stat().st_size == 7
    listed.unlink()
    assert not listed.exists()
