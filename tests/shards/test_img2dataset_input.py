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
    from pipeline.loopback import serve

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
