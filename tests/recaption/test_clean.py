"""Tests for `recaption.clean`: artefacts, loops, truncation and their composition."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from recaption.clean import (
    CleanResult,
    clean_caption,
    cut_repetition,
    drop_unfinished_sentence,
    strip_chat_artefacts,
)

SPLIT_CASES = Path(__file__).parent.parent / "shards" / "data" / "split_cases.jsonl"

# ---------------------------------------------------------------------------------------------
# strip_chat_artefacts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # LLaVA-1.5 / ShareGPT4V (Vicuna template)
        ("A dog on the grass.</s>", "A dog on the grass."),
        ("<s> ASSISTANT: A dog on the grass.</s>", "A dog on the grass."),
        (
            "USER: <image>\nDescribe the image. ASSISTANT: A dog on the grass.",
            "A dog on the grass.",
        ),
        ("### Assistant: A dog.\n### Human: What else?", "A dog."),
        ("A dog.<unk><pad><pad>", "A dog."),
        # Qwen2-VL / InternVL (ChatML)
        ("<|im_start|>assistant\nA cat on a sofa.<|im_end|>", "A cat on a sofa."),
        ("A cat on a sofa.<|im_end|>\n<|im_start|>user\nAnd now?", "A cat on a sofa."),
        ("A cat on a sofa.<|endoftext|>", "A cat on a sofa."),
        ("A cat.<|eot_id|>", "A cat."),
        # InstructBLIP / BLIP-2
        ("Answer: a man riding a surfboard on a wave", "a man riding a surfboard on a wave"),
        ("GPT: A red bus.", "A red bus."),
        # Mistral-style instruction tags
        ("[INST] <image>\nDescribe. [/INST] A red bus.", "A red bus."),
        ("[/INST] A red bus.", "A red bus."),
        # preambles
        (
            "Sure! Here is a detailed description of the image:\n\nThe image shows a cat.",
            "The image shows a cat.",
        ),
        ("Certainly! The image shows a cat.", "The image shows a cat."),
        ("Sure, here's a description of the image: A cat.", "A cat."),
        ("Here is a brief description of the given image: A cat.", "A cat."),
        ("ASSISTANT: Sure! Here is a detailed description of the image: A cat.", "A cat."),
        # markdown and whitespace
        ("The **red** car is  parked\tnear a   tree.", "The red car is parked near a tree."),
        ("  Items:  \n - a cup \n\n\n\n - a pen  ", "Items:\n- a cup\n\n- a pen"),
        ("Line one.\r\nLine two.", "Line one.\nLine two."),
        # dangling openers
        ('A sign reads "', "A sign reads"),
        ("A sign (", "A sign"),
        ('He said "hi"', 'He said "hi"'),
        ("The kids' toys.", "The kids' toys."),
        # a marker between sentences is a boundary (a line break), never a space
        ("The dog runs</s>The cat sleeps", "The dog runs\nThe cat sleeps"),
        ("A cat.<|eot_id|>A dog.<|endoftext|>", "A cat.\nA dog."),
        # emphasis marks of either kind; identifiers keep their underscores
        (
            "A _red_ car and a *blue* bus near IMG_2041.JPG.",
            "A red car and a blue bus near IMG_2041.JPG.",
        ),
        # only artefacts
        ("</s>", ""),
        ("<|im_start|>assistant\n<|im_end|>", ""),
        ("   ", ""),
    ],
)
def test_strip_chat_artefacts(raw: str, expected: str) -> None:
    assert strip_chat_artefacts(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Sure enough, the dog is asleep.",  # "Sure" without its punctuation is content
        "The sign says: Answer: 42.",  # role words only count at the very start
        "Certainly the tallest building in the photo.",
        "A sign reading USER: admin is on the screen.",
        "The word assistant appears on the badge.",
    ],
)
def test_strip_keeps_content(text: str) -> None:
    assert strip_chat_artefacts(text) == text


# ---------------------------------------------------------------------------------------------
# cut_repetition
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # (a) the same sentence repeated, exactly or after case/space normalisation
        ("The cat sleeps on the bed. The cat sleeps on the bed.", "The cat sleeps on the bed."),
        ("A dog runs in the park. A  dog runs in the PARK!", "A dog runs in the park."),
        (
            "A dog runs. The dog is brown. A dog runs. It has a red collar.",
            "A dog runs. The dog is brown. It has a red collar.",
        ),
        # (a) cycles of 2 and 3 sentences
        (
            "A kitchen. The fridge is white. The oven is black. The fridge is white. "
            "The oven is black. The fridge is white. The oven is black.",
            "A kitchen. The fridge is white. The oven is black.",
        ),
        (
            "One cat sits here. Two dogs play there. Three birds fly away. One cat sits here. "
            "Two dogs play there. Three birds fly away. One cat sits",
            # the unfinished fragment is no repeat: `drop_unfinished_sentence` handles it
            "One cat sits here. Two dogs play there. Three birds fly away. One cat sits",
        ),
        # (a) list items repeated with new numbers
        (
            "1. A red apple on a plate.\n2. A red apple on a plate.\n3. A red apple on a plate.",
            "1. A red apple on a plate.",
        ),
        # (b) n-gram loop mid-sentence, no sentence end before: keep the first occurrence
        (
            "The image shows a street with a red car, a red car, a red car, a red car, a red",
            "The image shows a street with a red car",
        ),
        # (b) loop after a complete sentence: cut at that sentence end
        (
            "A busy street at noon. There are people, people, people, people, people",
            "A busy street at noon.",
        ),
        # (b) long comma-list loop
        (
            "The shelf holds books, " + "a vase, a lamp, a clock, " * 20 + "a vase",
            "The shelf holds books, a vase, a lamp, a clock",
        ),
        # (b) loop at the very start
        ("a red car, a red car, a red car, a red car", "a red car"),
        ("the the the the the dog", "the"),
        # (b) a whole-sentence loop with sentence ends in between
        ("A cat. Sleeps. A cat. Sleeps. A cat. Sleeps. A cat.", "A cat. Sleeps."),
        # (c) a long n-gram recurring with variations
        (
            "A crowd. A man wearing a blue hat and a bag, a man wearing a blue hat and shoes, "
            "a man wearing a blue hat and gloves, a man wearing a blue hat and a scarf",
            "A crowd.",
        ),
    ],
)
def test_cut_repetition_loops(raw: str, expected: str) -> None:
    out, flagged = cut_repetition(raw)
    assert flagged
    assert out == expected


@pytest.mark.parametrize(
    "text",
    [
        "The left chair is red. The right chair is red.",
        "A very, very old house stands on the hill.",
        "A very, very, very old house.",  # three times is emphasis, four a loop
        "1. A red apple.\n2. A green apple.\n3. A yellow apple.",
        "1. A red apple. 2. A green apple. 3. A yellow apple.",
        "There are two cats. One cat is black. The other cat is white. Both cats are asleep.",
        "A sign reads 1,000,000,000,000 and the clock shows 10:10:10:10.",
        "Numbers 1, 2, 3, 4, 5 and 6 are painted on the wall.",
        "A bowl of red apples, green apples, yellow apples and red grapes.",
        "On the left side of the room is a desk. On the right side of the room is a bed.",
        "Bye bye, said the sign.",
        "The dog is happy. It is a happy dog.",
        # one template per object: a long n-gram recurs, but what lies between changes
        "The image features 4 simple geometric shapes on a grey background. A purple bar is "
        "located in the upper right of the frame, covering approx. 3.2% of the picture. A green "
        "circle is located in the lower right of the frame, covering approx. 15.7% of the "
        "picture. A white triangle is located in the upper left of the frame, covering approx. "
        "9.4% of the picture. A red square is located in the center of the frame, covering "
        "approx. 6.1% of the picture.",
        "",
    ],
)
def test_cut_repetition_natural_text(text: str) -> None:
    assert cut_repetition(text) == (text, False)


def test_cut_repetition_natural_corpus() -> None:
    """The splitter's hand-written caption cases hold no loop."""
    rows = [json.loads(line) for line in SPLIT_CASES.read_text().splitlines() if line.strip()]
    flagged = [r["text"] for r in rows if cut_repetition(r["text"])[1]]
    assert flagged == []


def test_cut_repetition_parameters() -> None:
    text = "a red car, a red car, a blue bus"
    assert cut_repetition(text) == (text, False)
    assert cut_repetition(text, min_repeats=2) == ("a red car", True)
    with pytest.raises(ValueError):
        cut_repetition(text, min_repeats=1)


def test_cut_repetition_unicode_and_odd_lowercase() -> None:
    # "İ".lower() is two characters: offsets must still land on the original text.
    text = "İstanbul café. " + "A red tram, " * 6
    out, flagged = cut_repetition(text)
    assert flagged and out == "İstanbul café."


# ---------------------------------------------------------------------------------------------
# drop_unfinished_sentence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A dog sits on the grass. The dog is brown and", "A dog sits on the grass."),
        ("A dog sits! Is it happy? It looks", "A dog sits! Is it happy?"),
        ('A sign reads "Open." Below it is a', 'A sign reads "Open."'),
        ("A dog sits (on a mat.) The dog is", "A dog sits (on a mat.)"),
        ("A dog. the dog", "A dog. the dog"),  # no sentence starts in lower case
        ("Items:\n1. A red apple\n2. A green", "Items:\n1. A red apple"),
        ("The tower is 3.5 m tall. It was built by Dr. Smith e.g.", "The tower is 3.5 m tall."),
        ("A car is parked. It is approx. 4 m long and", "A car is parked."),
        ("A jersey with No. 7 hangs here. The", "A jersey with No. 7 hangs here."),
        ("A portrait of J. R. Smith hangs. The frame", "A portrait of J. R. Smith hangs."),
        ("A complete sentence.", "A complete sentence."),
        ("no sentence end at all", "no sentence end at all"),
        ("1. A cat", "1. A cat"),  # a list number is no sentence end
        ("", ""),
    ],
)
def test_drop_unfinished_sentence(raw: str, expected: str) -> None:
    assert drop_unfinished_sentence(raw) == expected


# ---------------------------------------------------------------------------------------------
# clean_caption
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "finish", "text", "flags"),
    [
        ("A dog on the grass.</s>", "stop", "A dog on the grass.", []),
        ("A dog on the grass. It is", "length", "A dog on the grass.", ["truncated"]),
        ("A dog on the grass.", "length", "A dog on the grass.", ["truncated"]),
        (
            "a dog on the grass with a",
            "length",
            "a dog on the grass with a",
            ["truncated", "unfinished_kept"],
        ),
        (
            "ASSISTANT: A street. There is a car, a car, a car, a car, a car, a",
            "length",
            "A street.",
            ["repetition", "truncated"],
        ),
        (
            "A red car, a red car, a red car, a red car",
            "length",
            "A red car",
            ["repetition", "truncated", "unfinished_kept"],
        ),
        ("A cat sits here. A cat sits here.", None, "A cat sits here.", ["repetition"]),
    ],
)
def test_clean_caption(raw: str, finish: str | None, text: str, flags: list[str]) -> None:
    res = clean_caption(raw, finish)
    assert res == CleanResult(text=text, flags=flags, status="ok")


@pytest.mark.parametrize(
    "raw", [None, "", "   \n\t ", "</s>", "<|im_end|><|endoftext|>", "ASSISTANT:"]
)
@pytest.mark.parametrize("finish", [None, "stop", "length"])
def test_clean_caption_empty(raw: str | None, finish: str | None) -> None:
    res = clean_caption(raw, finish)
    assert res.status == "empty"
    assert res.text == ""
    assert res.flags == (["truncated"] if finish == "length" else [])


def test_clean_result_is_frozen() -> None:
    res = clean_caption("A cat.", "stop")
    with pytest.raises(AttributeError):
        res.text = "x"  # type: ignore[misc]


IDEMPOTENCE_CASES = [
    "Sure! Here is a detailed description of the image:\n\nThe image shows a **cat**.</s>",
    "A street. There is a car, a car, a car, a car, a car, a",
    "1. A red apple.\n2. A red apple.\n3. A green apple.\n4. A",
    "The cat sleeps. The dog barks. The cat sleeps. The dog barks. The cat",
    "A man wearing a hat and a bag, a man wearing a hat and shoes, a man wearing a hat and "
    "gloves, a man wearing a hat and a scarf, a man wearing a hat",
    'A sign reads "Open 24 hours. Come in." next to the door (',
    "The left chair is red. The right chair is red.",
]


@pytest.mark.parametrize("raw", IDEMPOTENCE_CASES)
@pytest.mark.parametrize("finish", ["stop", "length"])
def test_clean_caption_idempotent(raw: str, finish: str) -> None:
    once = clean_caption(raw, finish)
    twice = clean_caption(once.text, "stop")
    assert twice.text == once.text
    assert "repetition" not in twice.flags
    assert cut_repetition(once.text) == (once.text, False)
    assert strip_chat_artefacts(once.text) == once.text


_WORDS = (
    "a the red blue dog cat car tree man woman table sits stands near on in with and of "
    'image shows large small wooden bright, very, Dr. 3.5 e.g. No. 7 (left) "sign"'.split()
)
_DECOR = [
    "</s>",
    "<|im_end|>",
    "ASSISTANT:",
    "**",
    "\n",
    "\n- ",
    "  ",
    "\t",
    ". ",
    "! ",
    "? ",
    "...",
]


def _random_caption(rng: random.Random) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(0, 60)):
        r = rng.random()
        if r < 0.1:
            parts.append(rng.choice(_DECOR))
        elif r < 0.15 and parts:  # a loop: repeat the last few parts
            k = rng.randint(1, 5)
            parts.extend(parts[-k:] * rng.randint(1, 6))
        else:
            parts.append(rng.choice(_WORDS))
    sep = rng.choice([" ", " ", ", ", ""])
    return sep.join(parts)


def test_clean_caption_property() -> None:
    rng = random.Random(20240601)
    for _ in range(200):
        raw = _random_caption(rng)
        finish = rng.choice([None, "stop", "length"])
        res = clean_caption(raw, finish)
        assert res.text == res.text.strip(), raw
        assert res.status == ("ok" if res.text else "empty"), raw
        assert res.flags == sorted(set(res.flags)), raw
        again = clean_caption(res.text, "stop")
        assert again.text == res.text, raw
        assert "repetition" not in again.flags, raw
