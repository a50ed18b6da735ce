"""Units of the recaption stage: image decoding, shard decoding, atomic unit files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.units import (
    CAPTION_COLUMNS,
    CAPTION_SCHEMA,
    decode_image,
    decode_shard,
    read_unit,
    unit_path,
    write_unit,
)
from tests.recaption.conftest import make_input_shards
from tests.shards.helpers import write_i2d_shard


def _encode(size, mode="RGB", fmt="JPEG", color=None) -> bytes:
    from PIL import Image

    if color is None:
        color = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "L": 90, "P": 3}[mode]
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def _check_rgb(arr, shape):
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == shape


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(
    "size, expect",
    [
        ((640, 320), (168, 336, 3)),  # landscape: width capped, ratio kept
        ((320, 640), (336, 168, 3)),  # portrait: height capped
        ((1000, 1000), (336, 336, 3)),
        ((2688, 1344), (168, 336, 3)),  # big JPEG: decoded at a reduced scale first
        ((337, 100), (100, 336, 3)),
    ],
)
def test_decode_image_caps_the_longer_side(fmt, size, expect):
    arr = decode_image(_encode(size, fmt=fmt), 336)
    _check_rgb(arr, expect)
    # The colour survives the resize (a red image stays red).
    r, g, b = arr.reshape(-1, 3).mean(axis=0)
    assert r > 150 and g < 80 and b < 80


@pytest.mark.parametrize("size", [(64, 48), (336, 200), (10, 336)])
def test_decode_image_leaves_small_images_alone(size):
    arr = decode_image(_encode(size, fmt="PNG"), 336)
    _check_rgb(arr, (size[1], size[0], 3))
    assert (arr == [200, 30, 30]).all()  # lossless and not resampled


@pytest.mark.parametrize(
    "mode, fmt", [("RGBA", "PNG"), ("L", "PNG"), ("L", "JPEG"), ("P", "PNG"), ("RGB", "WEBP")]
)
def test_decode_image_always_gives_rgb_uint8(mode, fmt):
    arr = decode_image(_encode((40, 30), mode=mode, fmt=fmt), 336)
    _check_rgb(arr, (30, 40, 3))


def test_decode_image_grey_becomes_three_equal_channels():
    arr = decode_image(_encode((40, 30), mode="L", fmt="PNG"), 336)
    assert (arr == 90).all()


def test_decode_image_rejects_bad_bytes():
    with pytest.raises(Exception):  # noqa: B017 - Pillow raises several types
        decode_image(b"\xff\xd8\xff not a jpeg at all", 336)
    with pytest.raises(Exception):  # noqa: B017
        decode_image(_encode((64, 48))[:60], 336)  # truncated


@pytest.fixture
def shards(tmp_path):
    return make_input_shards(tmp_path / "in", shards=2, per_shard=6)


def test_decode_shard_keeps_input_order_and_failures(shards):
    d = decode_shard(str(shards), "00001", 336)
    assert d.shard == "00001"
    # Tar order first, then the sidecar's rows that are not in the tar.
    expected = [f"00001{i:04d}" for i in range(6)] + ["000019999"]
    assert d.order == expected
    assert len(set(d.order)) == len(d.order)
    assert set(d.failures) == {"000010002", "000019999"}
    status, error = d.failures["000010002"]
    assert status == "image_decode_error"
    assert str(shards / "00001.tar") in error and "000010002" in error
    status, error = d.failures["000019999"]
    assert status == "failed_to_download"
    assert "404" in error
    # keys: the decoded images, in input order; together with failures, every key exactly once.
    assert d.keys == [k for k in expected if k not in d.failures]
    assert sorted(d.keys + list(d.failures)) == sorted(d.order)
    assert len(d.images) == len(d.keys)
    for key, img in zip(d.keys, d.images, strict=True):
        _check_rgb(img, (48, 64, 3))
        # make_input_shards colours image i with red 40*i: images stay aligned with their keys.
        i = int(key[-4:])
        assert abs(float(img[..., 0].mean()) - 40 * i % 256) < 12, key


def test_decode_shard_without_failures_and_with_resize(shards):
    d = decode_shard(str(shards), "00000", 32)
    assert d.order == d.keys == [f"00000{i:04d}" for i in range(6)]
    assert d.failures == {}
    assert all(img.shape == (24, 32, 3) for img in d.images)


def test_decode_shard_duplicate_key_first_wins(tmp_path):
    from tests.shards.helpers import jpeg_bytes

    def sample(key, color):
        return {"key": key, "url": f"http://x/{key}", "caption": key, "jpg": jpeg_bytes(color)}

    write_i2d_shard(
        tmp_path,
        "00000",
        [sample("a", (250, 0, 0)), sample("b", (0, 250, 0)), sample("a", (0, 0, 250))],
        [],
    )
    d = decode_shard(str(tmp_path), "00000", 336)
    assert d.order == d.keys == ["a", "b"]
    assert d.images[0][..., 0].mean() > 200  # the first "a" (red), not the later blue one


def test_decode_shard_sidecar_row_missing_from_tar(tmp_path):
    import pyarrow.parquet as pq_

    from tests.shards.helpers import jpeg_bytes

    ok = [{"key": "k0", "url": "u", "caption": "c", "jpg": jpeg_bytes()}]
    write_i2d_shard(tmp_path, "00000", ok, [])
    side = pq_.read_table(tmp_path / "00000.parquet").to_pylist()
    side.append({**side[0], "key": "k1"})  # listed as a success, absent from the tar
    pq_.write_table(pa.Table.from_pylist(side), tmp_path / "00000.parquet")
    d = decode_shard(str(tmp_path), "00000", 336)
    assert d.order == ["k0", "k1"]
    assert d.keys == ["k0"]
    assert d.failures["k1"][0] == "image_missing"


def _rows():
    return [
        {
            "key": "000000000",
            "status": "ok",
            "error": None,
            "model": "m",
            "prompt": "Describe.",
            "text": "A red square.",
            "raw_text": " A red square.</s>",
            "finish_reason": "stop",
            "generated_tokens": 7,
            "flags": ["stripped"],
        },
        # A failure row carries only what the actor knows; the rest must read back as nulls.
        {"key": "000000001", "status": "image_decode_error", "error": "bad", "model": "m"},
    ]


def test_unit_path_layout(tmp_path):
    assert (
        unit_path(tmp_path, "llava", "00003") == tmp_path / "captions" / "llava" / "00003.parquet"
    )
    assert unit_path(str(tmp_path), "m", "00000").parent == tmp_path / "captions" / "m"


def test_write_unit_is_atomic_and_reads_back(tmp_path):
    path = unit_path(tmp_path / "out", "m", "00000")
    write_unit(path, _rows())
    assert path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.parquet"]  # no temp left
    table = read_unit(path)
    assert table.schema.equals(CAPTION_SCHEMA)
    assert table.schema.metadata[b"longcap.captions_version"] == b"1"
    assert table.column_names == CAPTION_COLUMNS
    rows = table.to_pylist()
    assert rows[0] == _rows()[0]
    assert rows[1]["text"] is None and rows[1]["generated_tokens"] is None
    assert rows[1]["flags"] is None
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_write_unit_replaces_and_failed_write_keeps_the_old_file(tmp_path):
    path = unit_path(tmp_path, "m", "00000")
    write_unit(path, _rows())
    write_unit(path, _rows()[:1])
    assert read_unit(path).num_rows == 1
    bad = [{**_rows()[0], "generated_tokens": "seven"}]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_unit(path, bad)
    assert read_unit(path).num_rows == 1  # the previous complete file is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.parquet"]


def test_write_unit_requires_key_status_model(tmp_path):
    path = unit_path(tmp_path, "m", "00000")
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError)):
        write_unit(path, [{"key": "k", "status": None, "model": "m"}])
    assert not path.exists()


def test_write_unit_empty_unit(tmp_path):
    path = unit_path(tmp_path, "m", "00000")
    write_unit(path, [])
    table = read_unit(path)
    assert table.num_rows == 0 and table.schema.equals(CAPTION_SCHEMA)


def test_read_unit_rejects_other_parquet(tmp_path):
    path = tmp_path / "captions" / "m" / "00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a"], "status": ["ok"], "caption": ["x"]}), path)
    with pytest.raises(ValueError) as info:
        read_unit(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "not a longcap caption file" in msg
    assert "'model'" in msg and "'text'" in msg  # names what is missing


def test_read_unit_missing_file(tmp_path):
    with pytest.raises((OSError, FileNotFoundError)):
        read_unit(Path(tmp_path) / "nope.parquet")
