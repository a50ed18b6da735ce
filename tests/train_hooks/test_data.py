"""Shard streaming: tar and Parquet agree, batches are reproducible, ranks see disjoint data,
a restarted stream continues where it stopped, and short-caption-only samples still train."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from train_hooks.data import (
    ShardStream,
    StreamConfig,
    list_shards,
    make_loader,
    read_shard,
)
from train_hooks.tokenizer import CornerTokenizer


@pytest.fixture(scope="module")
def tok():
    return CornerTokenizer(None, 2, 64)


def cfg(**kw):
    base = dict(batch_size=4, subcaptions=2, image_size=32, shuffle_buffer=8, seed=3)
    base.update(kw)
    return StreamConfig(**base)


def keys(loader_or_ds, n):
    return [b["keys"] for b in itertools.islice(iter(loader_or_ds), n)]


def test_tar_and_parquet_give_the_same_records(shards_dir):
    shards = list_shards(shards_dir)
    assert len(shards) == 4 and sum(s.count for s in shards) == 40
    for shard in shards:
        tar = list(read_shard(shard, "tar"))
        pq = list(read_shard(shard, "parquet"))
        assert [r["key"] for r in tar] == [r["key"] for r in pq]
        assert len(tar) == shard.count
        for a, b in zip(tar, pq, strict=True):
            assert a["image"] == b["image"] and a["caption"] == b["caption"]
            assert [c["subcaptions"] for c in a["long_captions"]] == [
                c["subcaptions"] for c in b["long_captions"]
            ]


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
def test_batches_reproducible_and_shaped(shards_dir, tok, fmt):
    ds = ShardStream(list_shards(shards_dir), tok, cfg(fmt=fmt))
    a, b = next(iter(ds)), next(iter(ds))
    assert a["keys"] == b["keys"]
    assert torch.equal(a["long_ids"], b["long_ids"]) and torch.equal(a["pixels"], b["pixels"])
    assert a["pixels"].shape == (4, 3, 32, 32) and a["long_ids"].shape == (1, 4, 64)
    assert a["short_ids"].shape == (1, 4, 64)
    other = ShardStream(list_shards(shards_dir), tok, cfg(fmt=fmt, seed=4))
    assert keys(other, 3) != keys(ds, 3)


def test_epoch_covers_every_sample_once(shards_dir, tok):
    ds = ShardStream(list_shards(shards_dir), tok, cfg(batch_size=10, shuffle_buffer=1))
    first = sum(keys(ds, 4), [])
    assert len(set(first)) == 40  # one pass of 4 shards, no repeats within an epoch


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_and_workers_disjoint(shards_dir, tok, world):
    # world x 2 workers = 4 or 6 slots: by shard (4 shards) and by sample (6 > 4 shards).
    seen = []
    for rank in range(world):
        loader = make_loader(shards_dir, tok, cfg(batch_size=2), 2, rank, world)
        seen.append(set(sum(keys(loader, 4), [])))
    for a, b in itertools.combinations(seen, 2):
        assert not a & b


def test_restart_continues_the_stream(shards_dir, tok):
    full = keys(make_loader(shards_dir, tok, cfg(), num_workers=2), 9)
    for start in (3, 4):  # odd and even: the worker rotation matters for odd
        rest = keys(
            make_loader(shards_dir, tok, cfg(), num_workers=2, start_batch=start), 9 - start
        )
        assert rest == full[start:]
    # No workers: the same stream as two workers would not be, but a restart still continues.
    full0 = keys(make_loader(shards_dir, tok, cfg(), num_workers=0), 6)
    assert keys(make_loader(shards_dir, tok, cfg(), num_workers=0, start_batch=2), 4) == full0[2:]


def test_dataset_smaller_than_batch(shards_dir, tok, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    for f in list_shards(shards_dir)[0].tar, list_shards(shards_dir)[0].parquet:
        shutil.copy(f, one / f.name)
    ds = ShardStream(list_shards(one), tok, cfg(batch_size=32))
    b = next(iter(ds))
    assert len(b["keys"]) == 32  # 12 samples, batches still fill (across epochs)


def test_short_caption_only_sample_trains(shards_dir, tok):
    ds = ShardStream(list_shards(shards_dir), tok, cfg())
    rec = next(iter(read_shard(list_shards(shards_dir)[0])))
    rec = dict(rec, long_captions=[])
    _, shorts, longs = ds.prepare(0, rec)
    assert longs == [shorts] == [[rec["caption"]]]
    assert ds.prepare(0, dict(rec, key="x"))[2] == [[rec["caption"]]]
    two = ShardStream(list_shards(shards_dir), tok, cfg(long_texts=2))
    assert two.prepare(0, rec)[2] == [[rec["caption"]]] * 2


def test_shard_counts_match_the_tokenizer_and_fill_is_never_cut(shards_dir, tok):
    ds = ShardStream(list_shards(shards_dir), tok, cfg())
    n = 0
    for rec in read_shard(list_shards(shards_dir)[1]):
        for lc in rec["long_captions"]:
            assert lc["subcaption_tokens"] == tok.count(lc["subcaptions"])
        (text,) = ds.prepare(0, rec)[2]
        row = tok.encode_ids([text])[0]
        used = sum(tok.count(text)) + len(text)
        assert used <= tok.budget and len(row) == 1 + 2 + used  # filled, not cut
        n += 1
    assert n > 0


def test_long_texts_and_mllm_short_texts_shapes(shards_dir, tok):
    c = cfg(long_texts=2, mllm_short_texts=2, mode="across_models")
    b = next(iter(ShardStream(list_shards(shards_dir), tok, c)))
    assert b["long_ids"].shape == b["long_mask"].shape == (2, 4, 64)
    assert b["short_ids"].shape == (3, 4, 64)
    # Row 0 of the short texts is the raw caption of each sample, rows 1-2 MLLM short captions.
    rec = next(iter(read_shard(list_shards(shards_dir)[0])))
    assert rec["short_captions"] == []  # the sample data has none: add two
    rec["short_captions"] = [{"model": "m1", "text": "a cat."}, {"model": "m2", "text": "a dog."}]
    shorts = ShardStream(list_shards(shards_dir), tok, c).prepare(0, rec)[1]
    assert shorts[0] == rec["caption"]
    assert sorted(shorts[1:]) == ["a cat.", "a dog."]


@pytest.mark.parametrize("mode", ["fill", "dreamlip", "k"])
def test_every_text_mode_streams(shards_dir, tok, mode):
    b = next(iter(ShardStream(list_shards(shards_dir), tok, cfg(text_mode=mode, window=2))))
    assert b["long_ids"].shape == (1, 4, 64)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="longcap shards"):
        list_shards(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no .parquet or .tar"):
        list_shards(tmp_path)
