"""Statistics: exact histogram merges, percentiles, the report, and the fallback read."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from shards import schema as S
from shards.dataset_stats import collect_stats, format_report
from shards.stats import ShardStats, histogram_percentile, merge_stats


def test_histogram_percentile_is_nearest_rank():
    values = list(range(1, 101))
    hist = Counter(values)
    assert [histogram_percentile(hist, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert histogram_percentile(Counter([7]), 50) == 7
    assert histogram_percentile(Counter(), 50) is None


def _random_sample(rng: random.Random, i: int) -> S.Sample:
    if rng.random() < 0.1:
        return S.Sample(key=str(i), status=S.FAIL_IMAGE_DECODE)
    longs = []
    for model in ("a", "b"):
        n = rng.randint(1, 9)
        longs.append(
            S.LongCaption(model=model, text="t", tokens=rng.randint(5, 300), subcaptions=["s"] * n)
        )
    return S.Sample(
        key=str(i),
        source=rng.choice(["x", "y"]),
        caption="c",
        caption_tokens=rng.randint(1, 30),
        caption_subcaptions=1,
        long_captions=longs,
    )


def test_merged_shards_equal_one_pass():
    rng = random.Random(0)
    samples = [_random_sample(rng, i) for i in range(500)]
    whole = ShardStats()
    parts = [ShardStats() for _ in range(4)]
    for i, s in enumerate(samples):
        whole.add(s)
        parts[i % 4].add(s)
    # Through JSON, as the files do.
    merged = merge_stats(ShardStats.from_json(json.loads(json.dumps(p.to_json()))) for p in parts)
    a, b = whole.report(), merged.report()
    a.pop("shards"), b.pop("shards")
    assert a == b
    tokens = [lc.tokens for s in samples if s.ok for lc in s.long_captions]
    assert a["texts"] == len(tokens)
    assert a["tokens_per_text"] == pytest.approx(sum(tokens) / len(tokens))
    assert a["tokens_percentiles"]["max"] == max(tokens)
    assert a["share_over"]["77"] == pytest.approx(sum(t > 77 for t in tokens) / len(tokens))
    by_a = [lc.tokens for s in samples if s.ok for lc in s.long_captions if lc.model == "a"]
    assert a["by_model"]["a"]["texts"] == len(by_a)


def test_report_of_built_shards(built_shards):
    report = collect_stats(built_shards).report()
    assert report["images"] == 24 and report["samples"] == 27
    assert report["texts"] == 48
    assert set(report["by_model"]) == {"llava", "qwen"}
    assert report["failures"] == {
        S.FAIL_CAPTION_EMPTY: 1,
        S.FAIL_IMAGE_DECODE: 1,
        S.FAIL_IMAGE_MISSING: 1,
    }
    text = format_report(report)
    assert "model llava" in text and "raw captions" in text and "image_missing: 1" in text


def test_missing_stats_file_falls_back_to_parquet_metadata(built_shards):
    before = collect_stats(built_shards).report()
    (built_shards / "00001_stats.json").unlink()
    after = collect_stats(built_shards).report()
    assert after == before


def test_no_shards_is_a_clear_error(tmp_path):
    from shards.inputs import InputError

    with pytest.raises(InputError, match="no longcap shards"):
        collect_stats(tmp_path)


def test_fallback_counts_per_model_failures_like_the_stats_file(tmp_path):
    from shards.assemble import assemble
    from tests.shards.helpers import jpeg_bytes, write_jsonl

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    rows = [
        {
            "key": "a",
            "image_path": "a.jpg",
            "caption": "x",
            "long_captions": {"m": "A. B.", "n": ""},
        },
        {"key": "b", "image_path": "a.jpg", "caption": "", "long_captions": {"m": "C.", "n": "D."}},
        {"key": "c", "image_path": "nope.jpg", "caption": "y"},
    ]
    out = tmp_path / "out"
    assemble(write_jsonl(tmp_path / "m.jsonl", rows), out)
    with_file = collect_stats(out).report()
    (out / "00000_stats.json").unlink()
    assert collect_stats(out).report() == with_file
    assert with_file["failures"] == {"image_missing": 1, "n:empty": 1}
    assert with_file["raw"]["texts"] == 1 and with_file["texts"] == 3
