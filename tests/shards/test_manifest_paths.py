"""A manifest's image paths (issue 10, finding 3): they must resolve inside the manifest's folder,
must be regular files and are read with a size cap; through `longcap shards` as a user meets it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from shards import schema as S
from shards.inputs import read_file_capped
from tests.shards.helpers import jpeg_bytes, write_jsonl


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A manifest in data/ pointing in and out of its folder; returns the manifest."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes(color=(0, 0, 200)))
    (data / "link_out.jpg").symlink_to(tmp_path / "outside.jpg")
    (data / "link_zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(data / "pipe.jpg")
    rows = {
        "in": "in.jpg",
        "up": "../outside.jpg",
        "up_missing": "../no_such_file.jpg",
        "absolute": str(tmp_path / "outside.jpg"),
        "dev_zero": "/dev/zero",
        "link_out": "link_out.jpg",
        "link_zero": "link_zero.jpg",
        "fifo": "pipe.jpg",
        "dotdot_back_in": "../data/in.jpg",
    }
    return write_jsonl(
        data / "m.jsonl",
        [{"key": k, "image_path": p, "caption": f"{k}."} for k, p in rows.items()],
    )


def _run(manifest: Path, out: Path, *flags: str) -> dict[str, dict]:
    """`longcap shards` on the manifest; the output rows by key."""
    argv = ["shards", "--input", str(manifest), "--out", str(out), "--formats", "parquet"]
    assert main([*argv, *flags]) == 0
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r for r in rows}


def test_paths_outside_the_manifest_folder_are_failure_rows(hostile, tmp_path):
    rows = _run(hostile, tmp_path / "out")
    assert len(rows) == 9  # every manifest row is one sample or one recorded failure
    assert rows["in"]["status"] == S.STATUS_OK
    assert rows["dotdot_back_in"]["status"] == S.STATUS_OK
    for key in ("up", "up_missing", "absolute", "dev_zero", "link_out", "link_zero"):
        assert rows[key]["status"] == S.FAIL_PATH_OUTSIDE, rows[key]
        assert "--allow-paths-outside" in rows[key]["error"]
    # The error does not tell whether the file outside exists: same text but for the path.
    same = rows["up"]["error"].replace("outside.jpg", "X").replace("m.jsonl:2", "L")
    other = rows["up_missing"]["error"].replace("no_such_file.jpg", "X").replace("m.jsonl:3", "L")
    assert same == other
    # A fifo inside the folder is not read (reading it would block for ever).
    assert rows["fifo"]["status"] == S.FAIL_IMAGE_MISSING
    assert "not a regular file" in rows["fifo"]["error"]


def test_allow_paths_outside_reads_them_but_still_refuses_devices(hostile, tmp_path):
    rows = _run(hostile, tmp_path / "out_allowed", "--allow-paths-outside")
    for key in ("up", "absolute", "link_out"):
        assert rows[key]["status"] == S.STATUS_OK, rows[key]
    assert rows["up_missing"]["status"] == S.FAIL_IMAGE_MISSING
    # /dev/zero used to raise MemoryError and end the run; now it is one failure row.
    for key in ("dev_zero", "link_zero", "fifo"):
        assert rows[key]["status"] == S.FAIL_IMAGE_MISSING, rows[key]
        assert "not a regular file" in rows[key]["error"]


def test_image_files_are_read_with_a_cap(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"x" * 101)
    with pytest.raises(OSError, match="over the file cap of 100"):
        read_file_capped(path, max_bytes=100)
    assert read_file_capped(path, max_bytes=101) == b"x" * 101
    with pytest.raises(OSError, match="not a regular file"):
        read_file_capped(Path("/dev/zero"))


def test_image_folder_links_out_and_device_captions(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes())
    (folder / "a.txt").write_text("a red square.")
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(color=(9, 9, 9)))
    (folder / "b.jpg").symlink_to(tmp_path / "secret.jpg")
    (folder / "b.txt").write_text("a dark square.")
    (folder / "c.jpg").write_bytes(jpeg_bytes())
    (folder / "c.txt").symlink_to("/dev/zero")  # used to be read whole: MemoryError
    rows = _run(folder, tmp_path / "out")
    assert rows["a"]["status"] == S.STATUS_OK and rows["a"]["caption"] == "a red square."
    assert rows["b"]["status"] == S.FAIL_PATH_OUTSIDE
    assert rows["c"]["status"] == S.FAIL_PATH_OUTSIDE  # its caption links out of the folder
    rows = _run(folder, tmp_path / "out2", "--allow-paths-outside")
    assert rows["b"]["status"] == S.STATUS_OK
    assert rows["c"]["status"] == S.FAIL_INPUT and "not a regular file" in rows["c"]["error"]


def test_a_nul_byte_in_an_image_path_is_a_failed_row_not_a_crash(tmp_path):
    """Found by the hypothesis fuzz (tests/pipeline/test_ingest_fuzz.py): os.stat raises
    ValueError on a NUL byte, which used to end the whole assembly."""
    from shards.inputs import read_file_capped

    with pytest.raises(OSError, match="not a valid path"):
        read_file_capped(tmp_path / "a\x00b.jpg")
