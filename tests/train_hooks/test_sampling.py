"""The pure sub-caption sampler: windows, reachability, replacement, modes, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from train_hooks.sampling import (
    ACROSS_MODELS,
    ONE_MODEL,
    choose,
    full_long_texts,
    sample_long_text,
    sample_windows,
    window_starts,
)

SUBS = [f"s{i}." for i in range(6)]


def caps(*lists, models=("llava", "qwen")):
    return [
        {"model": m, "status": "ok", "subcaptions": list(s)}
        for m, s in zip(models, lists, strict=False)
    ]


def dreamlip_draw(n: int, merged: int, k: int, rng: random.Random) -> list[int]:
    """DreamLIP's defective sampler, for contrast: starts from range(n - merged - 1)."""
    return rng.sample(range(max(1, n - merged - 1)), min(k, max(1, n - merged - 1)))


def test_window_starts_cover_every_item():
    assert window_starts(6, 1) == [0, 1, 2, 3, 4, 5]
    assert window_starts(6, 2) == [0, 1, 2, 3, 4]
    assert window_starts(2, 3) == [0]
    assert window_starts(0, 1) == []


def test_every_subcaption_reachable_including_last():
    rng = random.Random(0)
    seen = Counter()
    for _ in range(400):
        for piece in sample_windows(SUBS, 2, 1, rng):
            seen[piece] += 1
    assert set(seen) == set(SUBS)
    assert seen["s5."] > 0  # the last sub-caption
    # DreamLIP's draw never reaches the last index (here 5) with merged = 0.
    drl = Counter(i for _ in range(400) for i in dreamlip_draw(6, 0, 2, random.Random(_)))
    assert 5 not in drl


@pytest.mark.parametrize("m", [1, 2, 3])
def test_windows_are_m_consecutive(m):
    rng = random.Random(1)
    covered = set()
    for _ in range(200):
        for piece in sample_windows(SUBS, 2, m, rng):
            words = piece.split(" ")
            assert len(words) == m
            idx = [SUBS.index(w) for w in words]
            assert idx == list(range(idx[0], idx[0] + m))
            covered.update(idx)
    assert covered == set(range(6))


def test_without_replacement_when_enough():
    rng = random.Random(2)
    for _ in range(200):
        pieces = sample_windows(SUBS, 4, 1, rng)
        assert len(pieces) == 4 and len(set(pieces)) == 4
        assert pieces == sorted(pieces, key=SUBS.index)  # caption order kept


def test_with_replacement_only_when_too_few():
    rng = random.Random(3)
    pieces = sample_windows(SUBS[:2], 5, 1, rng)
    assert len(pieces) == 5
    assert set(pieces) == set(SUBS[:2])  # every item first, then repeats
    assert choose(rng, [1, 2, 3], 3) == [1, 2, 3]


def test_one_model_takes_one_caption():
    a, b = ["a0.", "a1.", "a2."], ["b0.", "b1.", "b2."]
    picked = set()
    for seed in range(50):
        pieces = sample_long_text(caps(a, b), 2, 1, ONE_MODEL, seed)
        src = {p[0] for p in pieces}
        assert len(src) == 1
        picked |= src
    assert picked == {"a", "b"}


def test_across_models_pools_windows_without_straddling():
    a, b = ["a0.", "a1."], ["b0.", "b1."]
    mixed = 0
    for seed in range(50):
        pieces = sample_long_text(caps(a, b), 3, 2, ACROSS_MODELS, seed)
        assert len(pieces) == 3
        for p in pieces:
            assert p in ("a0. a1.", "b0. b1.")  # a window stays inside one caption
        mixed += len(set(pieces)) == 2
    assert mixed == 50  # 2 windows in the pool, 3 asked: both used, then a repeat
    pieces = sample_long_text(caps(["a0.", "a1.", "a2."], ["b0.", "b1."]), 5, 1, ACROSS_MODELS, 0)
    assert sorted(pieces) == ["a0.", "a1.", "a2.", "b0.", "b1."]


def test_models_filter_and_status():
    longs = caps(["a0."], ["b0."])
    assert sample_long_text(longs, 1, models=["qwen"], rng=0) == ["b0."]
    longs[1]["status"] = "empty"
    assert sample_long_text(longs, 3, models=["qwen"], rng=0) == []


def test_deterministic_by_seed():
    longs = caps(SUBS, [s.upper() for s in SUBS])
    for mode in (ONE_MODEL, ACROSS_MODELS):
        runs = [sample_long_text(longs, 3, 2, mode, random.Random(7)) for _ in range(3)]
        assert runs[0] == runs[1] == runs[2]
    outs = {tuple(sample_long_text(longs, 3, 1, ACROSS_MODELS, s)) for s in range(20)}
    assert len(outs) > 1


def test_short_caption_only_sample():
    assert sample_long_text([], 4, rng=0) == []
    assert sample_long_text(caps([]), 4, rng=0) == []
    assert full_long_texts([]) == []


def test_full_long_texts_for_eval():
    assert full_long_texts(caps(["a0.", "a1."], ["b0."])) == [
        ("llava", ["a0.", "a1."]),
        ("qwen", ["b0."]),
    ]


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        sample_long_text(caps(SUBS), 2, mode="nope", rng=0)
