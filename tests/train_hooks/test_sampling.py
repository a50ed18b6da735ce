"""Text construction, sample by sample: fill, dreamlip and k modes, T long texts, short texts,
and the evaluation text."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from train_hooks.sampling import (
    ACROSS_MODELS,
    DREAMLIP,
    FILL,
    K_WINDOWS,
    ONE_MODEL,
    TextSpec,
    eval_text,
    full_long_texts,
    short_texts,
    training_texts,
    window_starts,
)

SUBS = [f"s{i}." for i in range(6)]


def caps(*lists, models=("llava", "qwen"), tokens=None):
    out = []
    for i, (m, s) in enumerate(zip(models, lists, strict=False)):
        cap = {"model": m, "status": "ok", "subcaptions": list(s)}
        if tokens is not None:
            cap["subcaption_tokens"] = list(tokens[i])
        out.append(cap)
    return out


def words(pieces):
    """Count function for tests: one token per word."""
    return [len(p.split()) for p in pieces]


def cost(pieces, count=words):
    return sum(count(pieces)) + len(pieces)  # each piece and its [SEP]


def test_window_starts_cover_every_item():
    assert window_starts(6, 1) == [0, 1, 2, 3, 4, 5]
    assert window_starts(6, 2) == [0, 1, 2, 3, 4]
    assert window_starts(2, 3) == [0]
    assert window_starts(0, 1) == []


def test_eval_text_is_every_subcaption_a_piece():
    assert eval_text(["a.", "", "b c."]) == ["a.", "b c."]
    assert full_long_texts(caps(["a0.", "a1."], ["b0."])) == [
        ("llava", ["a0.", "a1."]),
        ("qwen", ["b0."]),
    ]
    assert full_long_texts([]) == []


# --- fill ---------------------------------------------------------------------------------


def test_fill_takes_the_whole_caption_when_it_fits():
    spec = TextSpec(mode=FILL, budget=100)
    for seed in range(5):
        assert training_texts(caps(SUBS), spec, seed, words) == [SUBS]


@pytest.mark.parametrize("budget", [4, 5, 7, 9])
def test_fill_never_exceeds_the_budget_and_is_full(budget):
    # Sub-captions of 1..3 words: costs 2..4 tokens.
    subs = ["a.", "b b.", "c c c.", "d.", "e e.", "f f f.", "g."]
    spec = TextSpec(mode=FILL, budget=budget)
    for seed in range(40):
        (text,) = training_texts(caps(subs), spec, seed, words)
        assert cost(text) <= budget
        assert len(set(text)) == len(text)  # no repetition
        assert text == sorted(text, key=subs.index)  # caption order
        left = [s for s in subs if s not in text]
        # Full: no unused sub-caption would still fit.
        assert all(cost([s]) > budget - cost(text) for s in left)


def test_fill_uses_shard_counts_before_the_tokenizer():
    # The shard says every sub-caption is 9 tokens: budget 20 holds two (2 x (9 + 1)).
    longs = caps(SUBS, tokens=[[9] * 6])
    calls = []

    def count(pieces):
        calls.append(pieces)
        return [1] * len(pieces)

    (text,) = training_texts(longs, TextSpec(mode=FILL, budget=20), 0, count)
    assert len(text) == 2 and calls == []
    # Without shard counts the tokenizer's are used (1 token each: all six fit).
    (text,) = training_texts(caps(SUBS), TextSpec(mode=FILL, budget=20), 0, count)
    assert text == SUBS and calls == [SUBS]


def test_fill_windows_of_m_are_whole_and_disjoint():
    spec = TextSpec(mode=FILL, budget=8, m=2)  # a window of two one-word subs costs 4
    seen = Counter()
    for seed in range(100):
        (text,) = training_texts(caps(SUBS), spec, seed, words)
        assert len(text) == 4 and len(set(text)) == 4
        idx = [SUBS.index(s) for s in text]
        assert idx[1] == idx[0] + 1 and idx[3] == idx[2] + 1  # two whole windows
        seen.update(text)
    assert set(seen) == set(SUBS)  # every sub-caption reachable, the last included


def test_fill_across_models_pools_without_straddling():
    a, b = ["a0.", "a1.", "a2."], ["b0.", "b1.", "b2."]
    spec = TextSpec(mode=FILL, budget=8, m=2, source=ACROSS_MODELS)
    mixed = 0
    for seed in range(60):
        (text,) = training_texts(caps(a, b), spec, seed, words)
        assert len(text) == 4
        for i in (0, 2):  # each window of two stays inside one caption
            assert text[i][0] == text[i + 1][0]
        mixed += text[0][0] != text[2][0]
    assert mixed > 0


def test_fill_one_model_takes_one_caption_per_text():
    a, b = ["a0.", "a1.", "a2."], ["b0.", "b1.", "b2."]
    picked = set()
    for seed in range(30):
        spec = TextSpec(mode=FILL, budget=100, source=ONE_MODEL)
        (text,) = training_texts(caps(a, b), spec, seed, words)
        assert text in (a, b)
        picked.add(text[0][0])
    assert picked == {"a", "b"}


def test_default_source_pools_every_caption():
    a, b = ["a0.", "a1.", "a2."], ["b0.", "b1.", "b2."]
    (text,) = training_texts(caps(a, b), TextSpec(mode=FILL, budget=100), 0, words)
    assert text == a + b  # the budget holds both captions: the default fill takes them all


def test_fill_never_repeats_a_sentence_two_captioners_wrote():
    a, b = ["A red circle.", "No text is visible."], ["A blue square.", "No  text is visible."]
    for seed in range(20):
        (text,) = training_texts(caps(a, b), TextSpec(mode=FILL, budget=100), seed, words)
        said = sorted(" ".join(t.lower().split()) for t in text)
        assert said == ["a blue square.", "a red circle.", "no text is visible."]


def test_fill_single_subcaption_over_the_budget():
    longs = caps(["one two three four five six seven."])
    (text,) = training_texts(longs, TextSpec(mode=FILL, budget=3), 0, words)
    assert text == ["one two three four five six seven."]  # the tokenizer cuts this one


def test_fill_texts_fit_the_real_tokenizer():
    from train_hooks.tokenizer import CornerTokenizer

    tok = CornerTokenizer(None, 2, 48)
    subs = [
        "A wooden table stands in the middle of the room.",
        "On it lies an open book with yellowed pages.",
        "Sunlight falls through a tall window on the left.",
        "A cat sleeps on a red cushion near the door.",
        "The walls are painted a pale shade of green.",
    ]
    spec = TextSpec(mode=FILL, budget=tok.budget, source=ACROSS_MODELS)
    for seed in range(20):
        (text,) = training_texts(caps(subs), spec, seed, tok.count)
        row = tok.encode_ids([text])[0]
        assert len(row) == 1 + 2 + sum(tok.count(text)) + len(text) <= 48  # not cut
        assert row.count(tok.sep_id) == len(text)


# --- k ------------------------------------------------------------------------------------


def test_k_without_repeats_when_the_caption_is_short():
    spec = TextSpec(mode=K_WINDOWS, k=5)
    (text,) = training_texts(caps(SUBS[:2]), spec, 0)
    assert text == SUBS[:2]  # fewer pieces, never a repeat
    for seed in range(50):
        (text,) = training_texts(caps(SUBS), TextSpec(mode=K_WINDOWS, k=4), seed)
        assert len(text) == 4 and len(set(text)) == 4
        assert text == sorted(text, key=SUBS.index)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_k_windows_are_m_pieces_each(m):
    spec = TextSpec(mode=K_WINDOWS, k=2, m=m)
    covered = set()
    for seed in range(100):
        (text,) = training_texts(caps(SUBS), spec, seed)
        idx = [SUBS.index(s) for s in text]
        assert len(idx) == len(set(idx))  # windows never overlap
        assert len(text) == 2 * m
        for w in range(2):
            part = idx[w * m : (w + 1) * m]
            assert part == list(range(part[0], part[0] + m))
        covered.update(idx)
    assert covered == set(range(6))


def test_k_reaches_k_whenever_the_caption_can_hold_it():
    subs = [f"s{i}." for i in range(7)]  # seven: two windows of three fit, one sub left over
    starts = Counter()
    for seed in range(200):
        (text,) = training_texts(caps(subs), TextSpec(mode=K_WINDOWS, k=2, m=3), seed)
        assert len(text) == 6
        starts[(subs.index(text[0]), subs.index(text[3]))] += 1
    assert set(starts) == {(0, 3), (0, 4), (1, 4)}  # every placement of two windows


def test_k_across_models():
    pieces = training_texts(
        caps(["a0.", "a1.", "a2."], ["b0.", "b1."]),
        TextSpec(mode=K_WINDOWS, k=9, source=ACROSS_MODELS),
        0,
    )
    assert pieces == [["a0.", "a1.", "a2.", "b0.", "b1."]]


# --- dreamlip -----------------------------------------------------------------------------


def test_dreamlip_texts_of_merged_consecutive_subcaptions():
    spec = TextSpec(mode=DREAMLIP, m=3, texts=2)
    for seed in range(30):
        texts = training_texts(caps(SUBS), spec, seed)
        assert len(texts) == 2
        for text in texts:
            idx = [SUBS.index(s) for s in text]
            assert idx == list(range(idx[0], idx[0] + 3))  # '. ' joins become pieces


@pytest.mark.parametrize("m", [1, 2])
def test_dreamlip_off_by_one_never_reaches_the_last(m):
    fixed, orig = Counter(), Counter()
    for seed in range(300):
        for off, ctr in ((False, fixed), (True, orig)):
            spec = TextSpec(mode=DREAMLIP, m=m, texts=2, dreamlip_off_by_one=off)
            for text in training_texts(caps(SUBS), spec, seed):
                ctr.update(text)
    assert "s5." in fixed and "s5." not in orig
    if m == 2:  # DreamLIP's range(n - merged - 1) also loses the window starting at n - 3
        assert "s4." not in orig


def test_dreamlip_draws_with_replacement_only_when_too_few():
    for seed in range(30):
        texts = training_texts(caps(SUBS), TextSpec(mode=DREAMLIP, texts=6), seed)
        assert sorted(t[0] for t in texts) == SUBS  # random.sample: all distinct
    texts = training_texts(caps(SUBS[:2]), TextSpec(mode=DREAMLIP, texts=4), 0)
    assert len(texts) == 4 and {t[0] for t in texts} <= set(SUBS[:2])  # random.choices


def test_dreamlip_across_models_is_one_flat_list():
    a, b = ["a0.", "a1."], ["b0.", "b1."]
    spec = TextSpec(mode=DREAMLIP, m=2, texts=1, source=ACROSS_MODELS)
    seen = {tuple(training_texts(caps(a, b), spec, s)[0]) for s in range(60)}
    assert ("a1.", "b0.") in seen  # DreamLIP's pool concatenates the captions


# --- T long texts, short texts, common rules ----------------------------------------------


def test_long_texts_prefer_fresh_subcaptions():
    spec = TextSpec(mode=K_WINDOWS, k=3, texts=2, source=ACROSS_MODELS)
    for seed in range(30):
        t1, t2 = training_texts(caps(SUBS), spec, seed)
        assert not set(t1) & set(t2)  # six sub-captions: two disjoint texts of three
    spec = TextSpec(mode=FILL, budget=100, texts=2, source=ONE_MODEL)
    t1, t2 = training_texts(caps(SUBS[:3], SUBS[3:]), spec, 0, words)
    assert sorted([t1, t2]) == [SUBS[:3], SUBS[3:]]  # one model per text, both used
    # Fill tops a text up with used sub-captions when the fresh ones run out.
    t1, t2 = training_texts(caps(SUBS), TextSpec(mode=FILL, budget=100, texts=2), 0, words)
    assert t1 == t2 == SUBS


def test_models_filter_status_and_empty():
    longs = caps(["a0."], ["b0."])
    spec = TextSpec(mode=K_WINDOWS, k=1, models=("qwen",))
    assert training_texts(longs, spec, 0) == [["b0."]]
    longs[1]["status"] = "empty"
    assert training_texts(longs, spec, 0) == []
    assert training_texts([], TextSpec(budget=10), 0) == []
    assert training_texts(caps([]), TextSpec(budget=10), 0) == []


def test_deterministic_by_seed():
    longs = caps(SUBS, [s.upper() for s in SUBS])
    for mode in (FILL, DREAMLIP, K_WINDOWS):
        for src in (ONE_MODEL, ACROSS_MODELS):
            spec = TextSpec(mode=mode, source=src, budget=9, k=2, texts=2)
            runs = [training_texts(longs, spec, random.Random(7), words) for _ in range(3)]
            assert runs[0] == runs[1] == runs[2]
            assert len({str(training_texts(longs, spec, s, words)) for s in range(20)}) > 1


def test_short_texts():
    shorts = [{"model": "a", "text": "x"}, {"model": "b", "text": "y"}]
    assert short_texts("raw", shorts, 0, random.Random(0)) == ["raw"]
    got = short_texts("raw", shorts, 2, random.Random(0))
    assert got[0] == "raw" and sorted(got[1:]) == ["x", "y"]
    got = short_texts("raw", shorts, 3, random.Random(0))
    assert len(got) == 4 and set(got[1:]) == {"x", "y"}
    assert short_texts("raw", shorts, 1, random.Random(0), models=["b"]) == ["raw", "y"]
    assert short_texts("raw", [], 2, random.Random(0)) == ["raw", "raw", "raw"]


def test_bad_specs():
    with pytest.raises(ValueError, match="text mode"):
        TextSpec(mode="nope", budget=10)
    with pytest.raises(ValueError, match="sub-caption mode"):
        TextSpec(source="nope", budget=10)
    with pytest.raises(ValueError, match="budget"):
        TextSpec(mode=FILL)
    with pytest.raises(ValueError, match="T="):
        TextSpec(mode=K_WINDOWS, texts=0)
