"""A third-party URL list at ingest (issue 10, findings 2 and 8): refused URLs, non-UTF-8 URLs and
unparsable lines become failure rows; nothing is fetched from a refused address; config fields
are checked. Servers listen on 127.0.0.x only; other addresses appear only to be refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.ingest import IngestConfig, prepare_url_list, start_ingest
from tests.pipeline.loopback_servers import counting_server, route_server
from tests.shards.helpers import jpeg_bytes

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ["127.0.0.1/32"]


def _rejected(work: Path) -> dict[int, dict]:
    return {r["longcap_row"]: r for r in pq.read_table(work / "rejected.parquet").to_pylist()}


def test_refused_urls_are_failure_rows_before_download(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(jpeg_bytes())
    lines = [
        b"url,caption",
        b"http://127.0.0.1:8000/ok.jpg,fine",
        f"file://{secret},a local file".encode(),
        b"file:///no/such/file.png,a local file that is not there",
        b"ftp://127.0.0.1/x.jpg,ftp",
        b"gopher://127.0.0.1:70/_x,gopher",
        b"http://127.0.0.2:8000/x.jpg,loopback outside allowed_networks",
        b"http://169.254.169.254/latest/meta-data/,cloud metadata",
        b"http://[::1]:8000/x.jpg,ipv6 loopback",
        b"http://127.0.0.1:8000/caf\xe9.jpg,a URL that is not UTF-8",
        b"http://127.0.0.1:8000/ok.jpg,a duplicate",
    ]
    urls = tmp_path / "urls.csv"
    urls.write_bytes(b"\n".join(lines) + b"\n")
    cfg = IngestConfig(url_list=str(urls), allowed_networks=LOOPBACK)
    summary = prepare_url_list(cfg, tmp_path / "work")
    assert summary["rows"] == 10 and summary["accepted"] == 1
    rejected = _rejected(tmp_path / "work")
    assert {i: r["reason"] for i, r in rejected.items()} == {
        1: "url_refused:scheme",
        2: "url_refused:scheme",
        3: "url_refused:scheme",
        4: "url_refused:scheme",
        5: "url_refused:address",
        6: "url_refused:address",
        7: "url_refused:address",
        8: "url_not_utf8",
        9: "duplicate_url",
    }
    # Whether the local file exists makes no difference to what is stored.
    assert rejected[1]["detail"] == rejected[2]["detail"]
    assert str(tmp_path) not in json.dumps([r["detail"] for r in rejected.values()])
    assert rejected[8]["url"] == "http://127.0.0.1:8000/caf?.jpg"  # stored as valid UTF-8


def test_non_utf8_urls_in_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "urls.jsonl"
    jsonl.write_bytes(
        b'{"url": "http://127.0.0.1:1/a.jpg", "caption": "a"}\n'
        b'{"url": "http://127.0.0.1:1/\xff.jpg", "caption": "b"}\n'
        b"not json\n"
    )
    summary = prepare_url_list(
        IngestConfig(url_list=str(jsonl), allowed_networks=LOOPBACK), tmp_path / "w1"
    )
    assert summary["accepted"] == 1
    assert summary["rejected"] == {"url_not_utf8": 1, "bad_input_row": 1}
    table = pa.table({"url": [b"http://127.0.0.1:1/a.jpg", b"http://127.0.0.1:1/\xfe"]})
    pq.write_table(table, tmp_path / "urls.parquet")
    summary = prepare_url_list(
        IngestConfig(url_list=str(tmp_path / "urls.parquet"), allowed_networks=LOOPBACK),
        tmp_path / "w2",
    )
    assert summary["accepted"] == 1 and summary["rejected"] == {"url_not_utf8": 1}


def test_a_csv_line_with_too_many_fields_is_one_failure_row(tmp_path):
    urls = tmp_path / "urls.csv"
    urls.write_text(
        "url,caption\nhttp://127.0.0.1:1/a.jpg,a\nhttp://127.0.0.1:1/b.jpg,b,c,d\n"
        "http://127.0.0.1:1/c.jpg,c\n"
    )
    summary = prepare_url_list(
        IngestConfig(url_list=str(urls), allowed_networks=LOOPBACK), tmp_path / "w"
    )
    assert summary["rows"] == 3 and summary["accepted"] == 2
    assert summary["rejected"] == {"bad_input_row": 1}


def _build_yaml(tmp_path: Path, urls: Path, **ingest) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    cfg = {
        "output": str(tmp_path / "out"),
        "ingest": {"url_list": str(urls), "number_sample_per_shard": 4, **ingest},
        "models": [{"name": "m", "family": "llava-1.5", "path": str(model)}],
        "progress": False,
    }
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("allowed_networks", ["127.0.0.1/33"], "ingest.allowed_networks: '127.0.0.1/33'"),
        ("allowed_networks", ["localhost"], "ingest.allowed_networks: 'localhost'"),
        ("allowed_networks", "127.0.0.1/32", "ingest.allowed_networks: must be a list"),
        ("max_bytes", 0, "ingest.max_bytes: must be an integer >= 1"),
        ("max_bytes", "1MB", "ingest.max_bytes: must be an integer"),
        ("deadline_s", 0, "ingest.deadline_s: must be a number of seconds > 0"),
        ("deadline_s", "soon", "ingest.deadline_s: must be a number"),
    ],
)
def test_policy_fields_are_checked(tmp_path, capsys, field, value, message):
    from pipeline.build import main

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    assert main(["--config", str(_build_yaml(tmp_path, urls, **{field: value}))]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_img2dataset_fetch_keeps_to_the_policy(tmp_path):
    """img2dataset as a build runs it (`start_ingest`): a redirect to a refused address, an
    oversized body and a slow drip are failure rows with their reasons; a good image lands."""
    from shards.assemble import assemble
    from shards.readers import read_input

    image = jpeg_bytes(size=(64, 48))
    with counting_server("127.0.0.2") as target:
        routes = {
            "/ok.jpg": ("bytes", image),
            "/hop.jpg": ("redirect", f"{target.url}/x.jpg"),
            "/big.jpg": ("bytes", b"\xff" * 5000),
            "/endless.jpg": ("endless", 1000),
            "/drip.jpg": ("drip", 0.05),
        }
        with route_server(routes) as base:
            urls = tmp_path / "urls.csv"
            urls.write_text("url,caption\n" + "".join(f"{base}{p},{p}\n" for p in routes))
            cfg = IngestConfig(
                url_list=str(urls),
                allowed_networks=LOOPBACK,
                max_bytes=max(len(image), 4000),
                deadline_s=2,
                image_size=32,
                threads=4,
            )
            work = tmp_path / "work"
            summary = prepare_url_list(cfg, work)
            proc = start_ingest(cfg, work, [])
            assert proc.wait(timeout=300) == 0, (work / "img2dataset.log").read_text()[-3000:]
        assert target.count == 0
    assert summary["accepted"] == 5
    status = {s.caption: s.status for s in read_input(work / "shards")}
    assert status == {
        "/ok.jpg": "ok",
        "/hop.jpg": "url_refused:address",
        "/big.jpg": "url_refused:size",
        "/endless.jpg": "url_refused:size",
        "/drip.jpg": "url_refused:deadline",
    }
    res = assemble(work / "shards", tmp_path / "shards")
    assert res.samples_in == 5 and res.samples_ok == 1


@pytest.mark.slow
def test_longcap_build_refuses_before_connecting(tmp_path):
    """`longcap build` on a hostile list: every row is a failure row with its reason, the build
    finishes (exit 0), a local file's bytes are not in the dataset, and the server on a refused
    loopback address saw no connection."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes(color=(1, 2, 3)))
    with counting_server("127.0.0.2") as target:
        lines = [
            b"url,caption",
            f"file://{secret},local file".encode(),
            f"{target.url}/x.jpg,refused loopback".encode(),
            f"gopher://127.0.0.2:{target.port}/_x,gopher".encode(),
            f"http://127.0.0.2:{target.port}/caf\xe9.jpg,not utf-8".encode("latin-1"),
        ]
        urls = tmp_path / "urls.csv"
        urls.write_bytes(b"\n".join(lines) + b"\n")
        cfg = _build_yaml(tmp_path, urls, allowed_networks=LOOPBACK)
        ray_tmp = tempfile.mkdtemp(prefix="lcray", dir="/tmp")  # short: Ray's socket paths
        env = {
            **os.environ,
            "RAY_TMPDIR": ray_tmp,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        }
        try:
            r = subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "build", "--config", str(cfg)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        assert target.count == 0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out" / "shards"
    rows = [row for p in sorted(out.rglob("*.parquet")) for row in pq.read_table(p).to_pylist()]
    assert sorted(r["status"] for r in rows) == [
        "url_not_utf8",
        "url_refused:address",
        "url_refused:scheme",
        "url_refused:scheme",
    ]
    assert all(r["image"] is None for r in rows)
    assert not any(str(tmp_path) in (r["error"] or "") for r in rows)
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert report["complete"] and report["stats"]["samples"] == 4
