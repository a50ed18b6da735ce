"""Bad input: each case is a recorded per-sample failure or a clear whole-input error.

Every test checks conservation: samples in = rows written = ok + failed, and ok ones are in the tar.
"""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import schema as S
from shards.assemble import AssembleConfig, assemble
from shards.inputs import InputError
from tests.shards.helpers import jpeg_bytes, write_i2d_shard, write_jsonl


def _rows(out):
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))])
    return {r["key"]: r for r in table.to_pylist()}


def _check_conservation(out, n_in):
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["count"] for s in stats) == n_in
    assert sum(s["successes"] + s["failed"] for s in stats) == n_in
    in_tar = 0
    for p in out.glob("*.tar"):
        with tarfile.open(p) as tar:
            in_tar += sum(1 for n in tar.getnames() if n.endswith(".json"))
    assert in_tar == sum(s["successes"] for s in stats)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "in").mkdir()
    return tmp_path


def test_bad_samples_are_recorded(folder):
    d = folder / "in"
    (d / "good.jpg").write_bytes(jpeg_bytes())
    (d / "corrupt.jpg").write_bytes(b"this is not an image at all")
    good = jpeg_bytes(size=(64, 64))
    (d / "trunc.jpg").write_bytes(good[: len(good) // 2])
    rows = [
        {
            "key": "good",
            "image_path": "good.jpg",
            "caption": "fine",
            "long_captions": {"m": "A box. ", "n": "   "},
        },
        {"key": "corrupt", "image_path": "corrupt.jpg", "caption": "x"},
        {"key": "trunc", "image_path": "trunc.jpg", "caption": "x"},
        {"key": "missing", "image_path": "nope.jpg", "caption": "x"},
        {"key": "empty", "image_path": "good.jpg", "caption": ""},
        {"key": "nopath", "caption": "x"},
        {"key": "good", "image_path": "good.jpg", "caption": "again"},
    ]
    manifest = write_jsonl(d / "m.jsonl", rows)
    with open(manifest, "ab") as f:
        f.write(b'{"key": "latin1", "image_path": "good.jpg", "caption": "caf\xe9"}\n')
        f.write(b"{not json\n")
    out = folder / "out"
    res = assemble(manifest, out, AssembleConfig())
    assert (res.samples_in, res.samples_ok) == (9, 1)
    got = _rows(out)
    status = {k: r["status"] for k, r in got.items()}
    assert status["good"] == "ok"
    assert status["corrupt"] == status["trunc"] == S.FAIL_IMAGE_DECODE
    assert status["missing"] == status["nopath"] == S.FAIL_IMAGE_MISSING
    assert status["empty"] == S.FAIL_CAPTION_EMPTY
    assert status["latin1"] == S.FAIL_CAPTION_ENCODING
    assert [k for k, s in status.items() if s == S.FAIL_INPUT] == ["line000000009"]
    assert [s for k, s in status.items() if k.startswith("good__dup")] == [S.FAIL_DUPLICATE_KEY]
    # Reasons name the file and line.
    assert f"{manifest}:4" in got["missing"]["error"] and "nope.jpg" in got["missing"]["error"]
    assert f"{manifest}:8" in got["latin1"]["error"]
    # A long caption that is only whitespace is a per-model failure, the sample stays ok.
    longs = {lc["model"]: lc for lc in got["good"]["long_captions"]}
    assert longs["m"]["status"] == "ok" and longs["m"]["subcaptions"] == ["A box."]
    assert longs["n"]["status"] == S.LONG_EMPTY
    _check_conservation(out, 9)


def test_manifest_missing_column_names_file_and_column(folder):
    m = write_jsonl(folder / "in" / "m.jsonl", [{"key": "a", "caption": "x"}])
    with pytest.raises(InputError, match=r"m\.jsonl: manifest has no image column"):
        assemble(m, folder / "out")
    csv = folder / "in" / "m.csv"
    csv.write_text("key,image_path\na,x.jpg\n")
    with pytest.raises(InputError, match=r"m\.csv: manifest has no caption column"):
        assemble(csv, folder / "out2")


def test_parquet_with_wrong_schema(folder):
    d = folder / "in"
    pq.write_table(pa.table({"foo": [1, 2]}), d / "00000.parquet")
    with pytest.raises(InputError, match=r"00000\.parquet: not an img2dataset sidecar"):
        assemble(d, folder / "out")
    (d / "00000.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(InputError, match=r"00000\.parquet: not a readable Parquet file"):
        assemble(d, folder / "out")


def _i2d_with_truncated_tar(d, sidecar: bool):
    ok = [
        {"key": f"{i:05d}", "url": f"u{i}", "caption": f"c{i}", "jpg": jpeg_bytes(size=(64, 64))}
        for i in range(6)
    ]
    write_i2d_shard(
        d,
        "00000",
        ok,
        [{"key": "00006", "url": "u6", "status": "failed_to_download", "error": "timeout"}],
    )
    data = (d / "00000.tar").read_bytes()
    (d / "00000.tar").write_bytes(data[: len(data) // 2])
    if not sidecar:
        (d / "00000.parquet").unlink()


def test_truncated_tar_with_sidecar_names_every_lost_sample(folder):
    d = folder / "i2d"
    _i2d_with_truncated_tar(d, sidecar=True)
    out = folder / "out"
    res = assemble(d, out)
    got = _rows(out)
    assert res.samples_in == 7 and len(got) == 7
    lost = [k for k, r in got.items() if r["status"] == "truncated_shard"]
    assert 1 <= len(lost) <= 6 and res.samples_ok == 6 - len(lost)
    assert "00000.tar: truncated or corrupt tar" in got[lost[0]]["error"]
    assert got["00006"]["status"] == S.FAIL_DOWNLOAD
    _check_conservation(out, 7)


def test_truncated_tar_without_sidecar_records_the_cut(folder):
    d = folder / "i2d"
    _i2d_with_truncated_tar(d, sidecar=False)
    out = folder / "out"
    res = assemble(d, out)
    got = _rows(out)
    assert got["00000_truncated"]["status"] == "truncated_shard"
    assert res.samples_ok >= 1 and res.samples_failed == 1
    _check_conservation(out, res.samples_in)
