"""`longcap build` with `output: s3://...`: every output in a bucket of moto's S3 server on
127.0.0.1 (tests/s3_server.py), images from a loopback server that counts its requests.

With the stub caption engine and the local executor (no model, no Ray), a build's time is
img2dataset's and the bucket's. One local build of the same URL list is the reference: the
bucket build must hold the same files and the same dataset rows; a bucket build SIGKILLed while
it downloads and run again must end the same, each key once, and must not download again the
input shards whose marks reached the bucket before the kill.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from shards import storage
from tests.pipeline.stub_build import (
    REPO,
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
DELAY_S = 0.15  # per image request: a shard takes long enough to kill the build between two


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client killed mid-response (the killed build) is expected here


class _Server:
    """Serves a folder on 127.0.0.1 like toyworld.loopback.serve, recording each request's path
    and answering each after DELAY_S."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                seen.append(self.path)
                time.sleep(DELAY_S)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        folder.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server_and_list(tmp_path_factory):
    from toyworld.loopback import make_url_list

    root = tmp_path_factory.mktemp("urls")
    server = _Server(root / "www")
    try:
        yield server, make_url_list(root, server.base, n=N_IMAGES, bad_rows=True)
    finally:
        server.close()


def _config(path: Path, url_list: Path, out: str) -> Path:
    write_build_config(path, url_list, Path("unused"), [stub_model()], PER_SHARD)
    cfg = yaml.safe_load(path.read_text())
    cfg["output"] = out  # a URI as given, or a local folder
    cfg["executor"] = "local"  # threads of the build's process: no Ray
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(tmp_path: Path, s3_server) -> dict[str, str]:
    env = {
        **os.environ,
        **s3_server["env"],
        "LONGCAP_STAGING_DIR": str(tmp_path / "staging"),
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return env


def _keys(uri: str) -> dict[str, storage.ObjectPath]:
    """{key relative to `uri`: object} of every object under the prefix."""
    root = storage.as_path(uri)
    return {p.path[len(root.path) + 1 :]: p for p in storage.list_files(root, recursive=True)}


def _pull(uri: str, dest: Path) -> Path:
    for rel, obj in _keys(uri).items():
        storage.download(obj, dest / rel)
    return dest


def _local_files(out: Path) -> set[str]:
    return {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".longcap.lock"
    }


@pytest.fixture(scope="module")
def local_reference(server_and_list, tmp_path_factory):
    """The same build into a local folder (the behaviour a bucket build must reproduce)."""
    _, url_list = server_and_list
    root = tmp_path_factory.mktemp("ref")
    out = root / "out"
    cfg = _config(root / "build.yaml", url_list, str(out))
    log = root / "build.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    assert run_to_end("pipeline.build", cfg, env, log) == 0, tail(log)
    check_build(out, N_SHARDS)
    return out


@pytest.mark.slow
def test_build_with_every_output_in_the_bucket(
    server_and_list, local_reference, s3_server, s3_bucket, tmp_path
):
    _, url_list = server_and_list
    out = f"{s3_bucket}/build"
    cfg = _config(tmp_path / "build.yaml", url_list, out)
    env = _env(tmp_path, s3_server)
    log = tmp_path / "build.log"
    assert run_to_end("pipeline.build", cfg, env, log) == 0, tail(log)
    assert not list(storage.as_path(out).glob(".longcap.lock")), "the run lock was left behind"

    # Every file of the local build is an object of the bucket build, and nothing else is.
    keys = set(_keys(out))
    assert keys == _local_files(local_reference), (
        sorted(keys ^ _local_files(local_reference)),
        tail(log),
    )
    # Nothing stayed only on this machine: the ingest mirror and the staging folders are gone.
    left = [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert left == [], left

    pulled = _pull(out, tmp_path / "pulled")
    check_build(pulled, N_SHARDS)
    assert dataset_rows(pulled) == dataset_rows(local_reference)

    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "stats", f"{out}/shards", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads(r.stdout)
    local_stats = json.loads((local_reference / "stats" / "stats.json").read_text())
    assert stats["images"] == local_stats["images"] > 0
    assert stats["samples"] == local_stats["samples"]


def _shard_urls(out: str) -> dict[str, set[str]]:
    """{input shard: the URL paths img2dataset downloads for it}: rows of the prepared URL list
    in order, PER_SHARD per shard (img2dataset's cut)."""
    source = storage.random_access(f"{out}/ingest/urls.parquet")
    urls = pq.read_table(source, columns=["url"]).column("url").to_pylist()
    return {
        f"{i // PER_SHARD:05d}": {u for u in urls[i : i + PER_SHARD]}
        for i in range(0, len(urls), PER_SHARD)
    }


@pytest.mark.slow
def test_killed_bucket_build_resumes_without_downloading_again(
    server_and_list, local_reference, s3_server, s3_bucket, tmp_path
):
    server, url_list = server_and_list
    out = f"{s3_bucket}/build"
    cfg = _config(tmp_path / "build.yaml", url_list, out)
    env = _env(tmp_path, s3_server)
    log = tmp_path / "build.log"
    proc = start("pipeline.build", cfg, env, log)
    marked: dict[str, int] = {}
    try:
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 300:
            marks = {
                p.name[:5]: p for p in storage.list_files(f"{out}/ingest/shards", "*_stats.json")
            }
            if 0 < len(marks) < N_SHARDS:
                marked = {
                    name: storage.as_path(f"{out}/ingest/shards/{name}.tar").stat().st_mtime_ns
                    for name in marks
                }
                break
            time.sleep(0.05)
    finally:
        end_session(proc)  # SIGKILL the build's process group (img2dataset with it)
    assert marked, f"the build was not caught between two input shards; log: {tail(log)}"

    first = len(server.requests)
    assert run_to_end("pipeline.build", cfg, env, log) == 0, tail(log)
    rerun = set(server.requests[first:])

    # The shards whose marks were in the bucket were neither downloaded nor uploaded again.
    urls = _shard_urls(out)
    for name, mtime in marked.items():
        fetched = {u for u in urls[name] if u.replace(server.base, "") in rerun}
        assert not fetched, f"shard {name} was marked before the kill, yet downloaded again"
        tar = storage.as_path(f"{out}/ingest/shards/{name}.tar")
        assert tar.stat().st_mtime_ns == mtime, f"shard {name} was uploaded again"
    assert rerun, "the rerun downloaded nothing: the kill came after the last shard"
    # (a shard may have reached the bucket between the look above and the kill)
    skipped = re.findall(r"build: (\d+) input shards already in", log.read_text())
    assert skipped and int(skipped[-1]) >= len(marked), tail(log)

    pulled = _pull(out, tmp_path / "pulled")
    check_build(pulled, N_SHARDS)
    assert set(_keys(out)) == _local_files(local_reference)
    rows = dataset_rows(pulled)
    assert rows == dataset_rows(local_reference)
    keys = [r[0] for shard in rows.values() for r in shard]
    ref_keys = [r[0] for shard in dataset_rows(local_reference).values() for r in shard]
    assert len(keys) == len(set(keys)), "a key is in the dataset twice"
    assert sorted(keys) == sorted(ref_keys)


def test_distributed_ingest_to_a_bucket_is_refused_naming_the_field(tmp_path):
    from pipeline.build import load_build_config
    from pipeline.config_loader import ConfigError

    url_list = tmp_path / "urls.csv"
    url_list.write_text("url,caption\nhttp://127.0.0.1/a.jpg,a\n")
    cfg = tmp_path / "build.yaml"
    write_build_config(cfg, url_list, Path("unused"), [stub_model()], PER_SHARD)
    data = yaml.safe_load(cfg.read_text())
    data["output"] = "s3://bucket/build/"
    cfg.write_text(yaml.safe_dump(data))
    loaded = load_build_config(cfg)  # multiprocessing: the URI is kept as given, less the "/"
    assert loaded.output == "s3://bucket/build"
    assert loaded.recaption.input == "s3://bucket/build/ingest/shards"
    assert loaded.recaption.output == "s3://bucket/build/recaption"
    data["ingest"]["distributor"] = "ray"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"ingest\.distributor: ray cannot yet write to an"):
        load_build_config(cfg)
