"""Real img2dataset against an HTTP server on 127.0.0.1, then `assemble` on its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import schema as S
from shards.assemble import assemble
from tests.shards.helpers import jpeg_bytes

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    from toyworld.loopback import serve

    root = tmp_path / "www"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes(color=(40 * i, 90, 200), size=(80, 60)))
    (root / "page.jpg").write_text("<html><body>not an image</body></html>")
    with serve(root) as base_url:
        yield base_url


def test_img2dataset_output_assembles_with_failures_carried(tmp_path, server):
    urls = [f"{server}/{i}.jpg" for i in range(6)] + [f"{server}/404.jpg", f"{server}/page.jpg"]
    rows = [
        {
            "url": u,
            "caption": f"caption {i}",
            "longLLA_captions": f"The image shows item {i}. It is blue.",
        }
        for i, u in enumerate(urls)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    out = tmp_path / "i2d"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [
        str(Path(sys.executable).parent / "img2dataset"),
        "--url_list", str(tmp_path / "urls.parquet"), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
        "--output_folder", str(out), "--processes_count", "1", "--thread_count", "4",
        "--image_size", "32", "--resize_mode", "keep_ratio", "--timeout", "5",
        "--retries", "0", "--distributor", "multiprocessing", "--enable_wandb", "False",
        "--save_additional_columns", "['longLLA_captions']", "--number_sample_per_shard", "100",
    ]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    # img2dataset's exit code is not trusted: its stats say what happened.
    i2d_stats = json.loads((out / "00000_stats.json").read_text())
    assert i2d_stats["count"] == 8 and i2d_stats["successes"] == 6

    res = assemble(out, tmp_path / "shards")
    table = pq.read_table(tmp_path / "shards" / "00000.parquet").to_pylist()
    assert res.samples_in == 8 and len(table) == 8 and res.samples_ok == 6
    failed = {r["url"].rsplit("/", 1)[-1]: r for r in table if r["status"] != S.STATUS_OK}
    assert set(failed) == {"404.jpg", "page.jpg"}
    assert "404" in failed["404.jpg"]["error"]
    ok = [r for r in table if r["status"] == S.STATUS_OK]
    assert all(min(r["width"], r["height"]) == 32 for r in ok)
    assert all(r["long_captions"][0]["model"] == "llava-1.5" for r in ok)
    assert all(len(r["long_captions"][0]["subcaptions"]) == 2 for r in ok)


def test_scene_truth_travels_from_the_url_list_through_ingest_and_assembly(tmp_path):
    """A toyworld URL list (`make_url_list(scenes=True)`): ingest keeps its `truth` column,
    img2dataset saves it, assembly stores it in the Parquet and the tar's KEY.json, and a
    rebuild from the longcap shards keeps it; each sample's truth is its own scene."""
    import tarfile

    from pipeline.ingest import IngestConfig, prepare_url_list, start_ingest
    from toyworld.loopback import make_url_list, serve
    from toyworld.samples import scene_rows
    from toyworld.scenes import Scene, alt_text

    n = 6
    with serve(tmp_path / "list" / "www") as base:
        url_list = make_url_list(tmp_path / "list", base, n=n, bad_rows=True, scenes=True, seed=4)
        cfg = IngestConfig(
            url_list=str(url_list),
            image_size=32,
            threads=4,
            timeout=5,
            allowed_networks=["127.0.0.1/32"],  # the test server; refused by default
        )
        work = tmp_path / "work"
        summary = prepare_url_list(cfg, work)
        assert "truth" in summary["extra_columns"]
        proc = start_ingest(cfg, work, summary["extra_columns"])
        proc.wait(timeout=300)  # its exit code is not trusted; the shards say what happened
    assemble(work / "shards", tmp_path / "shards")
    rows = pq.read_table(tmp_path / "shards" / "00000.parquet").to_pylist()
    expected = {f"{base}/images/{i:06d}.png": s for i, (s, _) in enumerate(scene_rows(n, seed=4))}
    scenes = [r for r in rows if r["url"] in expected]
    assert len(scenes) == n and all(r["status"] == S.STATUS_OK for r in scenes)
    for r in scenes:
        scene = Scene.from_dict(json.loads(r["truth"]))
        assert scene == expected[r["url"]] and r["caption"] == alt_text(scene)
    # The list's awkward rows (a 404, an HTML page, a 1-pixel image...) had no truth.
    assert len(rows) > n and all(r["truth"] is None for r in rows if r["url"] not in expected)
    ok = [r for r in rows if r["status"] == S.STATUS_OK]
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    assert {m["key"]: m["truth"] for m in metas} == {r["key"]: r["truth"] for r in ok}
    assemble(tmp_path / "shards", tmp_path / "rebuilt")
    again = pq.read_table(tmp_path / "rebuilt" / "00000.parquet").to_pylist()
    assert [r["truth"] for r in again] == [r["truth"] for r in rows]


def test_ingest_keeps_a_jsonl_lists_truth_object_as_json_text(tmp_path):
    from pipeline.ingest import IngestConfig, prepare_url_list

    rows = [
        {"url": "http://127.0.0.1:1/a.png", "caption": "a", "truth": {"objects": [], "b": 1}},
        {"url": "http://127.0.0.1:1/b.png", "caption": "b"},
    ]
    (tmp_path / "urls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = IngestConfig(url_list=str(tmp_path / "urls.jsonl"), allowed_networks=["127.0.0.1/32"])
    summary = prepare_url_list(cfg, tmp_path / "w")
    assert summary["extra_columns"] == ["truth"]
    saved = pq.read_table(tmp_path / "w" / "urls.parquet").to_pylist()
    assert [r["truth"] for r in saved] == ['{"b": 1, "objects": []}', None]
