"""ShardWriter: rotation, atomicity, per-shard stats, and loading by standard tools."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest

from shards import schema as S
from shards.writer import ShardWriter
from tests.shards.helpers import jpeg_bytes


def _sample(i: int, ok: bool = True) -> S.Sample:
    if not ok:
        return S.Sample(key=f"k{i:03d}", status=S.FAIL_IMAGE_DECODE, error="bad bytes")
    lc = S.LongCaption(
        model="llava",
        text="A red box. It is small.",
        tokens=7,
        subcaptions=["A red box.", "It is small."],
        subcaption_tokens=[4, 4],
    )
    return S.Sample(
        key=f"k{i:03d}",
        caption="red box",
        caption_tokens=2,
        caption_subcaptions=1,
        image=jpeg_bytes(),
        image_format="jpeg",
        width=32,
        height=24,
        long_captions=[lc],
        source="unit",
    )


def test_rotation_by_count_and_conservation(tmp_path):
    with ShardWriter(tmp_path, max_samples=10) as w:
        for i in range(25):
            w.write(_sample(i, ok=i % 5 != 0))
            if w.shard_full():
                w.close_shard()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        f"0000{i}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")
    ]
    total = 0
    for i in range(3):
        stats = json.loads((tmp_path / f"0000{i}_stats.json").read_text())
        table = pq.read_table(tmp_path / f"0000{i}.parquet")
        with tarfile.open(tmp_path / f"0000{i}.tar") as tar:
            jpgs = [m.name for m in tar.getmembers() if m.name.endswith(".jpg")]
        assert stats["count"] == table.num_rows == stats["successes"] + stats["failed"]
        assert len(jpgs) == stats["successes"]
        assert stats["failures"] == {S.FAIL_IMAGE_DECODE: stats["failed"]}
        total += stats["count"]
    assert total == 25


def test_rotation_by_bytes(tmp_path):
    one = len(jpeg_bytes())
    with ShardWriter(tmp_path, max_samples=1000, max_bytes=3 * one, parquet_images=False) as w:
        for i in range(7):
            w.write(_sample(i))
            if w.shard_full():
                w.close_shard()
    counts = [json.loads(p.read_text())["count"] for p in sorted(tmp_path.glob("*_stats.json"))]
    assert counts == [3, 3, 1]


def test_tar_members_are_webdataset_and_failed_rows_only_in_parquet(tmp_path):
    with ShardWriter(tmp_path, formats=["parquet", "tar"]) as w:
        w.write(_sample(0))
        w.write(_sample(1, ok=False))
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("k000.json").read())
        assert tar.extractfile("k000.txt").read() == b"red box"
    assert names == ["k000.jpg", "k000.txt", "k000.json"]
    assert meta["long_captions"][0]["subcaptions"] == ["A red box.", "It is small."]
    assert "image" not in meta
    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.column("status").to_pylist() == ["ok", S.FAIL_IMAGE_DECODE]
    assert table.schema.metadata[S.SCHEMA_METADATA_KEY] == str(S.SCHEMA_VERSION).encode()


def test_abort_leaves_no_partial_files(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path) as w:
            w.write(_sample(0))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_formats_validated():
    with pytest.raises(ValueError, match="formats"):
        ShardWriter("/tmp/never", formats=["zip"])


def test_parquet_without_images(tmp_path):
    with ShardWriter(tmp_path, parquet_images=False) as w:
        w.write(_sample(0))
    assert "image" not in pq.read_schema(tmp_path / "00000.parquet").names


def test_open_clip_webdataset_pipeline_reads_tars(built_shards):
    wds = pytest.importorskip("webdataset")
    urls = [str(p) for p in sorted(built_shards.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "txt", "json")
    items = list(ds)
    ok = sum(json.loads(p.read_text())["successes"] for p in built_shards.glob("*_stats.json"))
    assert len(items) == ok == 24
    img, txt, meta = items[0]
    assert img.size == (48, 48) and txt == meta["caption"]
    assert {lc["model"] for lc in meta["long_captions"]} == {"llava", "qwen"}


def test_huggingface_datasets_loads_parquet(built_shards, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in sorted(built_shards.glob("*.parquet"))]
    ds = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 27
    row = ds[0]
    assert row["status"] == "ok" and row["long_captions"][0]["subcaptions"]
