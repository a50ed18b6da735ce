"""count_tokens: BERT uncased WordPiece counts, no specials, no truncation, verified vocab."""

from __future__ import annotations

import shutil

import pytest

from shards import tokens as T


def test_counts_match_transformers_bert_tokenizer():
    transformers = pytest.importorskip("transformers")
    # transformers 5.19's BertTokenizerFast(vocab_file=...) maps everything to [UNK]; the
    # folder form loads the package's tokenizer.json as BERT does.
    bert = transformers.AutoTokenizer.from_pretrained(str(T.default_vocab_path().parent))
    texts = [
        "The image features a large wooden dining table.",
        "Unbelievably, 3.5 km of U.S. Route 66!",
        "",
        "naïve café — emojis 🐱 and CJK 猫",
    ]
    expected = [len(bert(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert bert.unk_token_id not in bert("a dog", add_special_tokens=False)["input_ids"]
    assert T.count_tokens(texts) == expected
    assert T.count_tokens(["a dog"]) == [2]


def test_no_truncation_past_512():
    text = " ".join(["word"] * 700)
    assert T.count_tokens([text]) == [700]


def test_empty_batch():
    assert T.count_tokens([]) == []


def test_vocab_checked_by_sha256(tmp_path, monkeypatch):
    bad = tmp_path / "vocab.txt"
    shutil.copy(T.default_vocab_path(), bad)
    with open(bad, "a") as f:
        f.write("extra\n")
    monkeypatch.setattr(T, "default_vocab_path", lambda: bad)
    T.load_tokenizer.cache_clear()
    try:
        with pytest.raises(T.TokenizerError, match="sha256"):
            T.count_tokens(["x"])
    finally:
        T.load_tokenizer.cache_clear()


def test_user_tokenizer_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nred\nbox\n##es\n")
    assert T.count_tokens(["red boxes", "blue"], tokenizer_dir=str(tmp_path)) == [3, 1]
    with pytest.raises(T.TokenizerError, match="no tokenizer.json or vocab.txt"):
        T.load_tokenizer(str(tmp_path / "nothing"))
