"""Untrusted tars and images (issue 10, findings 4, 7 and 8): capped tar members, one pixel and
aspect cap for every loader read from the header, long keys stored exactly."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from shards import limits
from shards import schema as S
from tests.shards.helpers import add_member, jpeg_bytes, write_jsonl

SIXTEEN_GIB = 16 << 30


def _number(n: int, width: int) -> bytes:
    """A header number field (GNU base-256 once octal no longer fits)."""
    return tarfile.itn(n, width, tarfile.GNU_FORMAT)


def sparse_member_header(name: str, declared: int) -> bytes:
    """An old-GNU sparse member header (type 'S') whose map declares `declared` bytes while the
    archive stores one block: what a 2 KB tar needs to claim a 16 GiB file."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 1  # bytes stored in the archive: one block follows
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    buf[386:398] = _number(declared - 1, 12)  # first sparse entry: offset ...
    buf[398:410] = _number(1, 12)  # ... and one byte of data
    buf[483:495] = _number(declared, 12)  # the real size
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])  # header checksum
    assert len(buf) == 512
    return bytes(buf) + b"\0" * 512


def write_evil_shard(folder, name="00000"):
    """An img2dataset-style shard: one good sample, then a sparse image declaring 16 GiB, a
    symlink, a device, each with their caption members (2 KB per hostile member)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_member(tar, "good.jpg", jpeg_bytes())
        add_member(tar, "good.txt", b"a good image")
        end = tar.offset  # before the end-of-archive blocks: hand-made members go there
    body = raw.getvalue()[:end] + sparse_member_header("sparse.jpg", SIXTEEN_GIB)
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_member(tar, "sparse.txt", b"sixteen gibibytes")
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        add_member(tar, "link.txt", b"a link")
        dev = tarfile.TarInfo("dev.jpg")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 5  # /dev/zero
        tar.addfile(dev)
        add_member(tar, "dev.txt", b"a device")
    (folder / f"{name}.tar").write_bytes(body + extra.getvalue())
    return folder / f"{name}.tar"


def _rows(out):
    return {
        r["key"]: r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()
    }


def test_sparse_link_and_device_members_are_failure_rows_read_unread(tmp_path, capsys):
    tar = write_evil_shard(tmp_path / "in")
    assert tar.stat().st_size < 16 << 10  # a 16 GiB member costs the attacker 1 KB
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        code = main(["shards", "--input", str(tmp_path / "in"), "--out", str(out)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    assert peak < 256 << 20  # nothing near the declared 16 GiB was allocated
    rows = _rows(out)
    assert rows["good"]["status"] == S.STATUS_OK
    for key, why in (("sparse", "sparse member"), ("link", "link member"), ("dev", "device")):
        assert rows[key]["status"] == S.FAIL_TAR_MEMBER
        assert why in rows[key]["error"]
    assert "17,179,869,184" in rows["sparse"]["error"]
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["count"] == 4 and stats["failures"] == {S.FAIL_TAR_MEMBER: 3}


def test_member_over_the_size_cap_is_refused_unread(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        add_member(tar, "big.jpg", jpeg_bytes(size=(64, 64)))
        add_member(tar, "big.txt", b"big")
        add_member(tar, "small.jpg", jpeg_bytes())
        add_member(tar, "small.txt", b"small")
    monkeypatch.setattr(limits, "MAX_MEMBER_BYTES", len(jpeg_bytes()) + 10)
    out = tmp_path / "out"
    assert main(["shards", "--input", str(folder), "--out", str(out)]) == 0
    rows = _rows(out)
    assert rows["big"]["status"] == S.FAIL_TAR_MEMBER and "over the cap" in rows["big"]["error"]
    assert rows["small"]["status"] == S.STATUS_OK


def test_trainer_refuses_a_foreign_tar_with_a_sparse_member(tmp_path):
    from train_hooks.data import read_tar

    tar = write_evil_shard(tmp_path / "in")
    with pytest.raises(ValueError, match="sparse member declaring 17,179,869,184 bytes"):
        list(read_tar(tar))


# --- one pixel and aspect cap, read from the header -------------------------------------------


def _png(size, mode="1") -> bytes:
    """A PNG of `size` that is tiny on disk (one colour, bilevel)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def over_cap_images():
    """(name, bytes): one over the pixel cap (100 Mpx, 12 KB as PNG), one over the aspect cap."""
    return {
        "huge": _png((10_000, 10_000)),
        "banner": _png((int(limits.MAX_ASPECT_RATIO * 10) + 10, 10), "RGB"),
    }


def test_every_loader_applies_the_same_caps(tmp_path, over_cap_images):
    from recaption.units import decode_image
    from shards.assemble import check_image
    from train_hooks.data import image_to_tensor

    loaders = {
        "assembly": lambda d: check_image(d),
        "recaption decode": lambda d: decode_image(d, 448),
        "trainer": lambda d: image_to_tensor(d, 32, (0.5,) * 3, (0.5,) * 3),
    }
    for name, data in over_cap_images.items():
        for loader, load in loaders.items():
            tracemalloc.start()
            try:
                with pytest.raises(limits.ImageLimitError):
                    load(data)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            # Refused from the header: the 100 Mpx image was never decoded.
            assert peak < 8 << 20, (name, loader, peak)
    ok = _png((300, 200), "RGB")
    assert check_image(ok)[:2] == (300, 200)
    assert decode_image(ok, 448).shape == (200, 300, 3)
    assert tuple(image_to_tensor(ok, 32, (0.5,) * 3, (0.5,) * 3).shape) == (3, 32, 32)


def test_assembly_and_decode_record_images_over_the_caps(tmp_path, over_cap_images):
    from recaption.units import decode_shard
    from tests.shards.helpers import write_i2d_shard

    ok = [
        {"key": name, "url": f"http://127.0.0.1/{name}", "caption": name, "jpg": data}
        for name, data in [*over_cap_images.items(), ("fine", jpeg_bytes())]
    ]
    write_i2d_shard(tmp_path / "in", "00000", ok, [])
    decoded = decode_shard(str(tmp_path / "in"), "00000", 64)
    assert decoded.keys == ["fine"], decoded.failures
    assert {k: v[0] for k, v in decoded.failures.items()} == {
        "huge": S.FAIL_IMAGE_LIMIT,
        "banner": S.FAIL_IMAGE_LIMIT,
    }
    out = tmp_path / "out"
    assert main(["shards", "--input", str(tmp_path / "in"), "--out", str(out)]) == 0
    rows = _rows(out)
    assert rows["huge"]["status"] == S.FAIL_IMAGE_LIMIT and "100,000,000" in rows["huge"]["error"]
    assert rows["banner"]["status"] == S.FAIL_IMAGE_LIMIT and "aspect" in rows["banner"]["error"]
    assert rows["fine"]["status"] == S.STATUS_OK


def test_build_hands_the_caps_to_img2dataset(tmp_path, monkeypatch):
    """run_build starts img2dataset with the caps every other loader applies."""
    import pipeline.build as B
    from pipeline.ingest import IngestConfig, start_ingest
    from pipeline.recaption_config import RecaptionConfig
    from shards.assemble import AssembleConfig

    seen = {}

    class Stop(Exception):
        pass

    def fake_start(cfg, work, extra_columns, extra_args=(), ray_address=None):
        seen["args"] = list(extra_args)
        raise Stop

    monkeypatch.setattr(B, "prepare_url_list", lambda cfg, work: {
        "rows": 1, "accepted": 1, "rejected": {}, "shards": 1, "extra_columns": []
    })  # fmt: skip
    monkeypatch.setattr(B, "_write_rejected", lambda work, out: None)
    monkeypatch.setattr(B, "start_ingest", fake_start)
    # The build starts its executor before img2dataset: the local one, with no model.
    recap = RecaptionConfig(str(tmp_path / "in"), str(tmp_path / "rec"), [], executor="local")
    cfg = B.BuildConfig(
        str(tmp_path / "out"), IngestConfig(url_list="x.csv"), recap, AssembleConfig()
    )
    with pytest.raises(Stop):
        B.run_build(cfg)
    assert seen["args"] == [
        "--max_image_area",
        str(limits.MAX_IMAGE_PIXELS),
        "--max_aspect_ratio",
        str(limits.MAX_ASPECT_RATIO),
    ]
    # ... and they reach img2dataset's command line, whose options they are.
    import inspect

    import img2dataset

    params = inspect.signature(img2dataset.download).parameters
    assert {"max_image_area", "max_aspect_ratio"} <= set(params)
    cmds = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            cmds.append(cmd)

    monkeypatch.setattr("subprocess.Popen", FakePopen)
    (tmp_path / "work").mkdir()
    start_ingest(IngestConfig(url_list="x.csv"), tmp_path / "work", [], seen["args"])
    assert cmds[0][-4:] == seen["args"]


# --- long keys ---------------------------------------------------------------------------------


def test_long_and_non_ascii_keys_round_trip_exactly(tmp_path):
    from shards.readers import read_shard
    from train_hooks.data import read_tar

    img = tmp_path / "a.jpg"
    img.write_bytes(jpeg_bytes())
    keys = ["k" * 200, "ключ_" * 30, "short"]
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"key": k, "image_path": "a.jpg", "caption": k} for k in keys]
    )
    out = tmp_path / "out"
    for formats in ("parquet,tar", "tar"):
        folder = out / formats.replace(",", "_")
        args = ["shards", "--input", str(manifest), "--out", str(folder), "--formats", formats]
        assert main(args) == 0
        assert [r["key"] for r in read_tar(folder / "00000.tar")] == keys
        assert [s.key for s in read_shard(folder, "00000")] == keys
        with tarfile.open(folder / "00000.tar") as tar:
            assert tar.getnames()[0] == "k" * 200 + ".jpg"
        stats = json.loads((folder / "00000_stats.json").read_text())
        assert stats["successes"] == 3


def test_a_key_the_tar_cannot_store_fails_its_row_not_the_shard(tmp_path):
    from shards.writer import ShardWriter

    bad = S.Sample(key="bad\udcff", status=S.STATUS_OK, caption="x", image=jpeg_bytes())
    good = S.Sample(key="good", status=S.STATUS_OK, caption="y", image=jpeg_bytes())
    with ShardWriter(tmp_path, formats=["parquet", "tar"]) as w:
        w.write(bad)
        w.write(good)
    stats = json.loads((tmp_path / "00000_stats.json").read_text())
    assert stats["count"] == 2 and stats["failures"] == {S.FAIL_KEY_UNSTORABLE: 1}
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert [n.split(".")[0] for n in tar.getnames()] == ["good"] * 3
