"""Assembly: determinism, resume after a kill, and the shard contents."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import assemble as A
from shards import readers
from shards.inputs import InputError


def _table(out):
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))])


def _shard_files(out):
    """The shard files of a folder (not the run lock, `.longcap.lock`)."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def test_contents_of_a_built_shard(built_shards):
    rows = _table(built_shards).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(rows) == 27 and len(ok) == 24
    r = ok[0]
    assert (
        r["width"] == r["height"] == 48 and r["image_format"] == "jpeg" and len(r["sha256"]) == 64
    )
    for lc in r["long_captions"]:
        assert lc["status"] == "ok"
        assert lc["subcaptions"] and len(lc["subcaption_tokens"]) == len(lc["subcaptions"])
        assert lc["tokens"] >= max(lc["subcaption_tokens"])
    # The qwen-style caption is a list: each item is its own sub-caption.
    qwen = next(lc for lc in r["long_captions"] if lc["model"] == "qwen")
    assert len(qwen["subcaptions"]) == len(qwen["text"].splitlines())


def test_same_input_same_output(tmp_path, sample_manifest):
    a, b = tmp_path / "a", tmp_path / "b"
    A.assemble(sample_manifest, a, A.AssembleConfig(shard_size=10))
    A.assemble(sample_manifest, b, A.AssembleConfig(shard_size=7))
    assert _table(a).to_pylist() == _table(b).to_pylist()
    for name in ("00000.tar", "00001.tar"):
        c = tmp_path / "c"
        A.assemble(sample_manifest, c, A.AssembleConfig(shard_size=10))
        assert (c / name).read_bytes() == (a / name).read_bytes()


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, sample_manifest, monkeypatch):
    cfg = A.AssembleConfig(shard_size=5, batch_size=4)
    ref = tmp_path / "ref"
    A.assemble(sample_manifest, ref, cfg)

    real = readers.read_input

    def dying(path, *args):
        for i, s in enumerate(real(path, *args)):
            if i == 13:
                raise KeyboardInterrupt("SIGINT in the middle of shard 00002")
            yield s

    out = tmp_path / "out"
    monkeypatch.setattr(A, "read_input", dying)
    with pytest.raises(KeyboardInterrupt):
        A.assemble(sample_manifest, out, cfg)
    # Finished shards stay, the one in flight leaves no file behind.
    assert _shard_files(out) == [
        f"0000{i}{e}" for i in range(2) for e in (".parquet", ".tar", "_stats.json")
    ]
    monkeypatch.setattr(A, "read_input", real)
    res = A.assemble(sample_manifest, out, cfg)
    assert res.shards_skipped == 2
    assert _shard_files(out) == _shard_files(ref)
    assert _table(out).to_pylist() == _table(ref).to_pylist()
    again = A.assemble(sample_manifest, out, cfg)
    assert again.shards_written == [] and again.samples_in == 0


def test_resume_refuses_shards_of_another_input(tmp_path, sample_manifest):
    out = tmp_path / "out"
    A.assemble(sample_manifest, out)
    other = sample_manifest.with_name("other.jsonl")
    other.write_text(sample_manifest.read_text())
    with pytest.raises(InputError, match="holds shards built from"):
        A.assemble(other, out)


def test_stats_record_the_input_rows_each_shard_covers(built_shards):
    stats = [json.loads(p.read_text()) for p in sorted(built_shards.glob("*_stats.json"))]
    assert [(s["input_start"], s["input_end"]) for s in stats] == [(0, 10), (10, 20), (20, 27)]


def test_config_is_validated():
    with pytest.raises(ValueError, match="shard_size"):
        A.AssembleConfig(shard_size=0).validate()
    with pytest.raises(ValueError, match="formats"):
        A.AssembleConfig(formats=["csv"]).validate()


def test_check_image_rejects_decompression_bombs():
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100
    try:
        from tests.shards.helpers import png_bytes

        with pytest.raises(Exception, match="exceeds limit"):
            A.check_image(png_bytes(size=(20, 20)))
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_splitter_options_reach_the_split():
    plain = A.AssembleConfig()
    titled = A.AssembleConfig(extra_titles=["Zqx."])
    text = "Meet Zqx. The dog runs."
    assert plain.split(text) == ["Meet Zqx.", "The dog runs."]
    assert titled.split(text) == ["Meet Zqx. The dog runs."]
    assert A.AssembleConfig(split_engine="punkt").split("A cat. A dog.") == ["A cat.", "A dog."]
    # LoTLIP's split is an engine too: it cuts "Dr." and "3.5", as LoTLIP's loaders do.
    regex = A.AssembleConfig(split_engine="regex")
    regex.validate()
    assert regex.split("Dr. Lee runs 3.5 km.\nA dog</s>") == ["Dr", "Lee runs 3", "5 km", "A dog"]
    with pytest.raises(ValueError, match="split_engine must be one of rules, punkt, regex"):
        A.AssembleConfig(split_engine="spacy").validate()


def _one_sample_manifest(tmp_path, long_captions: dict, caption: str = "a photo") -> object:
    from tests.shards.helpers import png_bytes

    img = tmp_path / "a.png"
    img.write_bytes(png_bytes())
    manifest = tmp_path / "m.jsonl"
    row = {"key": "a", "image": str(img), "caption": caption, "long_captions": long_captions}
    manifest.write_text(json.dumps(row) + "\n")
    return manifest


def test_chat_markers_are_sentence_boundaries(tmp_path):
    """A marker between two sentences splits them; it never becomes a space that merges them."""
    manifest = _one_sample_manifest(
        tmp_path,
        {"llava": {"text": "The dog runs</s>The cat sleeps<|im_end|>A bird sings<|eot_id|>"}},
        caption="A dog<|endoftext|>A cat",
    )
    A.assemble(manifest, tmp_path / "out")
    row = _table(tmp_path / "out").to_pylist()[0]
    (lc,) = row["long_captions"]
    assert lc["subcaptions"] == ["The dog runs", "The cat sleeps", "A bird sings"]
    assert row["caption"] == "A dog\nA cat" and row["caption_subcaptions"] == 2


def test_released_captions_are_cleaned_and_flagged(tmp_path):
    """clean_caption runs on a manifest's (or a released CSV's) long captions like on
    recaptioned ones: loops cut, preambles dropped, its flags recorded next to the given ones."""
    loop = "A street. " + "There is a car, a car, a car, a car, a car, a car."
    manifest = _one_sample_manifest(
        tmp_path,
        {
            "dreamlip_llava": {"text": "Sure! Here is a detailed description of the image: A cat."},
            "lotlip_loop": {"text": loop, "flags": ["released"]},
            "cut": {"text": "A dog sits. The dog is", "finish_reason": "length"},
        },
    )
    A.assemble(manifest, tmp_path / "out")
    (row,) = _table(tmp_path / "out").to_pylist()
    got = {lc["model"]: (lc["text"], lc["flags"]) for lc in row["long_captions"]}
    assert got == {
        "cut": ("A dog sits.", ["truncated"]),
        "dreamlip_llava": ("A cat.", []),
        "lotlip_loop": ("A street.", ["released", "repetition"]),
    }
