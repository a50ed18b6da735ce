"""Readers: manifests in every accepted form, image folders, img2dataset-style shards."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import schema as S
from shards.readers import InputError, read_input
from tests.shards.helpers import jpeg_bytes, write_i2d_shard, write_jsonl


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    for k in ("a1", "a2"):
        (tmp_path / "img" / f"{k}.jpg").write_bytes(jpeg_bytes())
    return tmp_path


def test_jsonl_form_from_the_issue(images):
    row = {
        "key": "a1",
        "image_path": "img/a1.jpg",
        "caption": "a dog",
        "long_captions": {"llava": "A dog runs.", "qwen": "A brown dog."},
    }
    (s,) = list(read_input(write_jsonl(images / "m.jsonl", [row])))
    assert s.key == "a1" and s.caption == "a dog" and s.status == S.STATUS_OK
    assert s.image_path == images / "img" / "a1.jpg"  # relative to the manifest
    assert {m: e["text"] for m, e in s.long_captions.items()} == {
        "llava": "A dog runs.",
        "qwen": "A brown dog.",
    }
    assert s.source == "m"


def test_lotlip_dreamlip_csv_columns(images):
    csv = images / "cc3m_long.csv"
    csv.write_text(
        "Image Path,raw_caption,shortIB_captions,longIB_captions,longSV_captions,longLLA_captions\n"
        'img/a1.jpg,a dog,a dog on grass,"The dog runs, e.g. fast.",A dog. Grass.,'
        "The image shows a dog.\n"
        "img/a2.jpg,a cat,,,,The image shows a cat.\n",
        encoding="utf-8",
    )
    a, b = list(read_input(csv))
    assert (a.key, a.caption, a.image_path.name) == ("000000000", "a dog", "a1.jpg")
    assert sorted(a.long_captions) == ["instructblip", "llava-1.5", "sharegpt4v"]
    assert a.long_captions["instructblip"]["text"] == "The dog runs, e.g. fast."
    assert a.short_captions == {"instructblip": "a dog on grass"}
    assert list(b.long_captions) == ["llava-1.5"] and b.short_captions == {}


def test_parquet_and_tsv_manifests(images):
    rows = [{"key": "a1", "image_path": "img/a1.jpg", "caption": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), images / "m.parquet")
    (images / "m.tsv").write_text("key\timage_path\tcaption\na1\timg/a1.jpg\tx\n")
    for name in ("m.parquet", "m.tsv"):
        (s,) = list(read_input(images / name))
        assert (s.key, s.caption, s.image_path.name) == ("a1", "x", "a1.jpg")


def test_image_folder_with_txt_captions(images):
    (images / "img" / "a1.txt").write_text("first")
    got = [(s.key, s.caption) for s in read_input(images / "img")]
    assert got == [("a1", "first"), ("a2", None)]


def test_img2dataset_folder_keeps_failed_rows(tmp_path):
    ok = [
        {"key": f"0000{i}", "url": f"http://h/{i}.jpg", "caption": f"c{i}", "jpg": jpeg_bytes()}
        for i in range(3)
    ]
    failed = [
        {
            "key": "00003",
            "url": "http://h/3.jpg",
            "status": "failed_to_download",
            "error": "HTTP Error 404: Not Found",
        }
    ]
    write_i2d_shard(tmp_path / "i2d", "00000", ok, failed)
    samples = list(read_input(tmp_path / "i2d"))
    assert [s.key for s in samples] == ["00000", "00001", "00002", "00003"]
    assert [s.status for s in samples] == ["ok", "ok", "ok", S.FAIL_DOWNLOAD]
    assert (
        samples[3].error == f"{tmp_path / 'i2d' / '00000.parquet'}:00003: HTTP Error 404: Not Found"
    )
    assert samples[0].url == "http://h/0.jpg" and samples[0].image == ok[0]["jpg"]
    assert samples[0].source == "i2d"


def test_img2dataset_additional_long_caption_columns(tmp_path):
    ok = [
        {
            "key": "00000",
            "url": "u",
            "caption": "c",
            "jpg": jpeg_bytes(),
            "extra": {"longLLA_captions": "The image shows a red square."},
        }
    ]
    write_i2d_shard(tmp_path / "i2d", "00000", ok, [])
    (s,) = list(read_input(tmp_path / "i2d"))
    assert s.long_captions["llava-1.5"]["text"] == "The image shows a red square."


def test_longcap_shards_read_back_as_input(built_shards):
    samples = list(read_input(built_shards))
    assert len(samples) == 27
    ok = [s for s in samples if s.status == S.STATUS_OK]
    assert len(ok) == 24 and all(s.image for s in ok)
    assert set(ok[0].long_captions) == {"llava", "qwen"}


def test_unknown_input_type(tmp_path):
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(InputError, match="unknown manifest type"):
        read_input(tmp_path / "x.xml")
    with pytest.raises(InputError, match="no such file"):
        read_input(tmp_path / "nope.jsonl")


def test_truth_from_jsonl_object_csv_text_and_img2dataset_json(images, tmp_path):
    """`truth` is JSON text wherever it comes from; an empty cell is no truth."""
    truth = {"objects": [], "background": "grey"}
    write_jsonl(
        images / "m.jsonl",
        [
            {"image_path": "img/a1.jpg", "caption": "x", "truth": truth},
            {"image_path": "img/a2.jpg", "caption": "y"},
        ],
    )
    a, b = read_input(images / "m.jsonl")
    assert a.truth == '{"background": "grey", "objects": []}' and b.truth is None
    (images / "m.csv").write_text(
        'image_path,caption,truth\nimg/a1.jpg,x,"{""a"": 1}"\nimg/a2.jpg,y,\n'
    )
    a, b = read_input(images / "m.csv")
    assert a.truth == '{"a": 1}' and b.truth is None
    ok = [{"key": "k", "jpg": jpeg_bytes(), "caption": "c", "url": "u", "extra": {"truth": "{}"}}]
    write_i2d_shard(tmp_path / "i2d", "00000", ok, [])
    (s,) = read_input(tmp_path / "i2d")
    assert s.truth == "{}"


def test_scene_samples_assemble_with_their_truth(tmp_path):
    from shards.assemble import assemble
    from toyworld.samples import make_scene_samples, scene_rows
    from toyworld.scenes import Scene

    manifest = make_scene_samples(tmp_path / "toy", n=5, seed=2)
    assemble(manifest, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 5
    assert [Scene.from_dict(json.loads(r["truth"])) for r in rows] == [
        s for s, _ in scene_rows(5, seed=2)
    ]


def test_schema_version_1_shards_without_truth_still_read(built_shards, tmp_path):
    """Version 1 shards predate `truth`: they read with no truth. A version 2 shard without
    the column is refused, naming it."""
    from shards.shard_reader import read_longcap_shard

    table = pq.read_table(built_shards / "00000.parquet").drop_columns(["truth"])
    old = tmp_path / "old"
    old.mkdir()
    v1 = table.replace_schema_metadata({S.SCHEMA_METADATA_KEY: b"1"})
    pq.write_table(v1, old / "00000.parquet")
    samples = list(read_longcap_shard(old / "00000.parquet", None))
    assert len(samples) == 10 and all(s.truth is None for s in samples)
    v2 = table.replace_schema_metadata({S.SCHEMA_METADATA_KEY: b"2"})
    pq.write_table(v2, old / "00000.parquet")
    with pytest.raises(InputError, match=r"missing columns \['truth'\]"):
        list(read_longcap_shard(old / "00000.parquet", None))
