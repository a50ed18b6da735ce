"""Tests for `shards.split.split_caption`.

The hand-labelled set is tests/shards/data/split_cases.jsonl: one MLLM-style caption a line with
its category and the sub-captions a careful reader would cut it into (list markers, `**` and
model artefacts dropped; see the `shards.split` docstring). The "holdout" category was written
after the rules were frozen.

tests/shards/data/split_cases_unlike.jsonl holds MLLM text unlike that set (issue 8): lowercase
output, brands and digits at a sentence start, abbreviations of other languages, URLs at a
sentence end, emoticons, markdown. Its "set" field says "dev" (written while the rules were
improved) or "blind" (written after they were frozen; scored once, see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from shards.split import SplitterConfig, split_caption
from shards.split_rules import build_lexicon

DATA = Path(__file__).parent / "data" / "split_cases.jsonl"
CASES: list[dict] = [json.loads(x) for x in DATA.read_text("utf-8").splitlines() if x.strip()]
ALL_CASES: list[tuple[str, list[str]]] = [(c["text"], c["expected"]) for c in CASES]
CATEGORIES = sorted({c["category"] for c in CASES})
UNLIKE: list[dict] = [
    json.loads(x)
    for x in (DATA.parent / "split_cases_unlike.jsonl").read_text("utf-8").splitlines()
    if x.strip()
]


def regex_baseline(text: str) -> list[str]:
    """What LoTLIP/DreamLIP loaders do."""
    return [p.strip() for p in re.split(r"\n|</s>|[.]", text) if p.strip()]


def words_per_piece(pieces: list[str]) -> list[tuple[str, ...]]:
    """Pieces as lower-cased word tuples: scores where a splitter cuts, not its punctuation."""
    out = [tuple(re.findall(r"[^\W_]+", p.lower())) for p in pieces]
    return [w for w in out if w]


def exact_rate(split, cases=ALL_CASES) -> tuple[float, list]:
    misses = [(t, split(t), e) for t, e in cases if split(t) != e]
    return 1 - len(misses) / len(cases), misses


def boundary_rate(split, cases=ALL_CASES) -> float:
    hits = sum(words_per_piece(split(t)) == words_per_piece(e) for t, e in cases)
    return hits / len(cases)


def test_case_set_size_and_coverage():
    assert len(CASES) >= 150
    counts = Counter(c["category"] for c in CASES)
    assert all(n >= 5 for n in counts.values()), counts


@pytest.mark.parametrize("engine", ["rules", "punkt"])
def test_exact_split_rate(engine):
    rate, misses = exact_rate(lambda t: split_caption(t, engine=engine))
    for text, got, expected in misses:
        print(f"MISS [{engine}] {text!r}\n  got      {got}\n  expected {expected}")
    print(f"{engine}: exact-split rate {rate:.3f} on {len(ALL_CASES)} captions")
    assert rate >= (0.95 if engine == "rules" else 0.90)


@pytest.mark.parametrize("category", CATEGORIES)
def test_category_rate(category):
    cases = [(c["text"], c["expected"]) for c in CASES if c["category"] == category]
    rate, misses = exact_rate(split_caption, cases)
    assert rate >= 0.9, misses


def test_regex_baseline_scores_far_lower():
    ours = boundary_rate(split_caption)
    base = boundary_rate(regex_baseline)
    print(f"boundary rate: split_caption {ours:.3f}, re.split baseline {base:.3f}")
    assert ours >= 0.95
    assert base <= ours - 0.4


# Targeted checks, one small example per phenomenon, separate from the data set.
ONE_PIECE = {
    "latin": "Fruits, e.g. apples and pears, i.e. the usual, fill the bowl.",
    "approx": "The wall is approx. 4 m high.",
    "titles": "Dr. Ruiz and Mrs. Ng greet Prof. Obi and Mr. Lamb.",
    "ranks": "A statue of Lt. Col. Hart stands by Gen. Lee's house.",
    "places": "The corner of St. Marks Pl. and Third Ave. is busy.",
    "numbered": "Bus No. 12 waits at gate No. 4.",
    "company": "A van from Delta Co. and a truck from Vega Ltd. are parked.",
    "jr": "A sign for Hank Wells Jr. hangs above the garage.",
    "measure": "A 5 ft. ladder leans on a 42 in. table.",
    "decimal": "The trail is 3.5 km long and costs $4.99, a 4.2% rise, at 1.5x speed.",
    "time": "The clock shows 10:30 a.m. and the sign says 3.30 pm.",
    "initials": "A letter from J. R. Tate and J.K. Ode lies open.",
    "domain": "The site www.example.com and mail name@mail.com are on photo.jpg.",
    "ellipsis": "Cups, plates and so on... the table is full.",
    "quote": 'A sign reading "Open. Come in." hangs on the door.',
    "quote_curly": "A sign reading \u201cClosed. Back soon!\u201d hangs on the door.",
    "etc_mid": "Pens, pads, etc. lie on the desk.",
    "us_mid": "A U.S. Navy ship and a U.K. ferry are docked.",
    "bang_mid": 'A Yahoo! banner and a "Sale!" sticker are visible.',
}
CUTS = {
    "no_space": ("It sits on the windowsill.The window is open.", 2),
    "bang": ("What a view! The sea is calm.", 2),
    "question": ("Is it a fox? It has a bushy tail.", 2),
    "etc_end": ("Cups, plates, etc. The table is wooden.", 2),
    "us_end": ("It was made in the U.S. The flag is red.", 2),
    "pm_end": ("It opens at 9 p.m. Music plays inside.", 2),
    "inc_end": ("The logo is for Acme Inc. It is blue.", 2),
    "ellipsis_end": ("The road goes on... A car is parked.", 2),
    "quote_end": ('The sign says "Open." The door is ajar.', 2),
    "newline": ("A dog\na cat", 2),
    "price_end": ("A mug costs $4.99. It is blue.", 2),
}
EXACT = {
    "end_token": ("A cat on a sofa.</s>", ["A cat on a sofa."]),
    "marker_between": ("The dog runs</s>The cat sleeps", ["The dog runs", "The cat sleeps"]),
    "chat_tokens": ("<|im_start|>assistant\nA red car.<|im_end|>", ["A red car."]),
    "role": ("ASSISTANT: A red car. It is new.", ["A red car.", "It is new."]),
    "md_role": ("### Assistant: A red car.", ["A red car."]),
    "user_turn": ("USER: <image>\nDescribe it. ASSISTANT: A boat.", ["Describe it.", "A boat."]),
    "numbered": ("Items:\n1. A pen\n2) A cup", ["Items:", "A pen", "A cup"]),
    "bullets": ("- A pen\n* A cup\n\u2022 A mug", ["A pen", "A cup", "A mug"]),
    "bold": ("**Sky:** Blue and clear.", ["Sky: Blue and clear."]),
    "inline_list": ("It has: 1. A pen. 2. A cup.", ["It has:", "A pen.", "A cup."]),
    "blank_lines": ("\n\n A tree. \n\n", ["A tree."]),
}


@pytest.mark.parametrize("engine", ["rules", "punkt"])
@pytest.mark.parametrize("name", sorted(ONE_PIECE))
def test_no_cut(name, engine):
    if engine == "punkt" and name in {"initials"}:
        pytest.skip("Punkt's initial heuristic does not cover 'J.K.'")
    assert split_caption(ONE_PIECE[name], engine=engine) == [ONE_PIECE[name]]


@pytest.mark.parametrize("name", sorted(CUTS))
def test_cut(name):
    text, n = CUTS[name]
    assert len(split_caption(text)) == n, split_caption(text)


@pytest.mark.parametrize("engine", ["rules", "punkt"])
@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact(name, engine):
    text, expected = EXACT[name]
    assert split_caption(text, engine=engine) == expected


@pytest.mark.parametrize("value", ["", "   ", "\n\t\n", "</s>", "...", None, 5, b"A cat."])
def test_empty_and_non_string(value):
    assert split_caption(value) == []
    assert split_caption(value, engine="punkt") == []


def test_unknown_engine():
    with pytest.raises(ValueError):
        split_caption("A cat.", engine="spacy")


def test_config_extends_lexicon():
    # "Pl." and "Fr." joined the default lexicon; "Plz." and "Bro." are not in it.
    text = "It is on Market Plz. Cafe Rouge is next door."
    assert len(split_caption(text)) == 2
    pl = SplitterConfig(extra_abbreviations=["Plz."])
    assert split_caption(text, config=pl) == [text]
    starters = SplitterConfig(extra_abbreviations={"plz"}, extra_starters={"Cafe"})
    assert len(split_caption(text, config=starters)) == 2
    assert len(split_caption(text, engine="punkt", config=starters)) == 2
    title = "Bro. Brown blesses the crowd."
    assert len(split_caption(title)) == 2
    assert split_caption(title, config=SplitterConfig(extra_titles=["BRO."])) == [title]
    assert split_caption("**A** cat.", config=SplitterConfig(strip_markdown=False)) == [
        "**A** cat."
    ]


def test_punkt_parameters_hold_the_lexicon():
    params = build_lexicon().punkt_parameters()
    assert {"e.g", "dr", "u.s", "etc", "a.m"} <= params.abbrev_types
    assert {"the", "there", "it"} <= params.sent_starters


# Properties, on the labelled captions and on long captions stitched from them.
def _corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [t for t, _ in ALL_CASES]
    return texts + [
        rng.choice([" ", "\n", "</s>", "  "]).join(rng.sample(texts, 4)) for _ in range(n)
    ]


_DROPPABLE = re.compile(r"\d{1,3}|s|im_start|im_end|endoftext|image|INST|[Aa]ssistant|ASSISTANT")
_ROLES = {"USER", "User", "Human", "HUMAN", "GPT", "SYSTEM", "System"}


@pytest.mark.parametrize("engine", ["rules", "punkt"])
def test_properties(engine):
    for text in _corpus():
        pieces = split_caption(text, engine=engine)
        assert pieces == split_caption(text, engine=engine)  # deterministic
        for p in pieces:
            assert p and p == p.strip() and "\n" not in p
            assert "</s>" not in p and "<|" not in p
        # Every word of the input comes out, in order, except markers and artefacts.
        got, src = re.findall(r"\w+", " ".join(pieces)), re.findall(r"\w+", text)
        i = 0
        for w in src:
            if i < len(got) and got[i] == w:
                i += 1
            else:
                assert _DROPPABLE.fullmatch(w) or w in _ROLES, (w, text, pieces)
        assert i == len(got), (text, pieces)


def test_pieces_are_stable():
    """Splitting a sub-caption again gives it back unchanged."""
    for text, _ in ALL_CASES:
        for piece in split_caption(text):
            assert split_caption(piece) == [piece], piece


def test_fuzz_never_fails():
    """Random junk of caption fragments: no exception, and the output invariants hold."""
    rng = random.Random(7)
    pool = [". ", "!", "?", '"', "'", "\n", "A", "a", "The", " ", "1", "2.", "</s>", ":", "**"]
    pool += ["USER:", "-", "#", "\u2026", "\u201c", "\u201d", "e.g.", "U.S.", "etc.", "Dr.", "J."]
    for _ in range(2000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))
        for engine in ("rules", "punkt"):
            pieces = split_caption(text, engine=engine)
            assert all(p and p == p.strip() and "\n" not in p for p in pieces), (text, pieces)


def test_sentence_ends_are_offsets_the_cleaner_can_cut_at():
    from shards.split import sentence_ends

    text = "Dr. Lee runs 3.5 km. It was made in the U.S.\n1. A cup. Built by Dr."
    ends = sentence_ends(text)
    # The line break after "U.S." is a boundary too, at the same offset as the sentence end.
    assert [text[:e].rsplit(" ", 1)[-1] for e in ends] == ["km.", "U.S.", "U.S.", "cup."]
    assert ends == sorted(ends) and text.index("\n") in ends


def test_regex_engine_is_lotlip_split():
    text = "Dr. Lee runs 3.5 km.\nA dog</s>\n<|im_end|> e.g. here"
    assert split_caption(text, engine="regex") == regex_baseline(text)
    assert split_caption("", engine="regex") == []


def test_unlike_set_size():
    counts = Counter((c["set"], c["category"]) for c in UNLIKE)
    assert sum(n for (s, _), n in counts.items() if s == "blind") >= 40
    assert {cat for _, cat in counts} == {
        "brand_digit",
        "emoticon",
        "foreign_abbrev",
        "lowercase",
        "markdown",
        "url_end",
    }


@pytest.mark.parametrize("category", sorted({c["category"] for c in UNLIKE}))
def test_text_unlike_the_test_set(category):
    cases = [(c["text"], c["expected"]) for c in UNLIKE if c["category"] == category]
    rate, misses = exact_rate(split_caption, cases)
    for text, got, expected in misses:
        print(f"MISS {text!r}\n  got      {got}\n  expected {expected}")
    assert rate >= 0.9, misses


def test_text_unlike_the_test_set_overall():
    rate, _ = exact_rate(split_caption, [(c["text"], c["expected"]) for c in UNLIKE])
    assert rate >= 0.95


@pytest.mark.parametrize(
    ("text", "n"),
    [
        # lowercase output is cut; a proper noun inside it does not switch that off
        ("a dog in paris. a cat on a roof.", 2),
        ("a dog in Paris. a cat on a roof.", 2),
        # ... but one capitalised sentence means lower case words do not start sentences
        ("A dog runs. the end of the leash is red.", 1),
        # emoticons: a sentence end only before a new sentence, never inside a time or a URL
        ("The clock shows 10:30 :) It is late.", 2),
        ("Visit https://example.org now.", 1),
        ("The note says: (a) call home.", 1),
        # German street by suffix, only before a number or a non-starter
        ("The shop is at Bahnhofstr. 7 near the station.", 1),
    ],
)
def test_unlike_rules(text, n):
    assert len(split_caption(text)) == n, split_caption(text)
