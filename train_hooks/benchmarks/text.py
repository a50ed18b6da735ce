"""The text rules of LoTLIP's evaluation, as piece lists for `CornerTokenizer`.

LoTLIP (wuw2019/LoTLIP @ 301b906) builds every long benchmark text the same way: the caption is
cut with `re.split(r'\\n|</s>|[.]', text)`, each part stripped, empty parts dropped, and the parts
joined with `'. '` (dataloaders/dci_retrieval.py:40-53 and the same lines in iiw_retrieval.py,
share4v.py, urban1k.py). Its BERT tokenizer then turns every `'. '` into [SEP]
(open_clip/tokenizer.py:467-468: `text = sep_token.join(text.split('. '))`), prepends the corner
tokens (:469-470) and lets the HF tokenizer add [CLS] ... [SEP] and cut to the context length,
keeping the closing [SEP] (:474-480).

`CornerTokenizer` takes a text as a list of pieces and writes `[CLS] corners p1 [SEP] p2 [SEP] ...`,
so LoTLIP's text `'. '.join(parts)` is exactly the piece list `parts`: the parts hold no '.', so
`'. '.join(parts).split('. ') == parts`. Every other text LoTLIP tokenizes (COCO captions,
zero-shot prompts) goes through the same `split('. ')`, so `short_text_pieces` keeps that split
(empty pieces included: "x. " gives "x [SEP] [SEP]" in both).

Before tokenizing, LoTLIP cleans each text with ftfy.fix_text and two html.unescape calls, then
collapses whitespace (tokenizer.py:66-75, 88-90, 473). `clean_text` does the same when ftfy is
installed; without it, it applies the html unescaping and the part of ftfy that changes clean UTF-8
text (curly quotes to straight ones, Latin ligatures, NFC). `clean_engine()` says which ran.
"""

from __future__ import annotations

import html
import re
import unicodedata

from shards.split import lotlip_split

# ftfy's uncurl_quotes and fix_latin_ligatures (ftfy/chardata.py), for when ftfy is absent.
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_LIGATURES = str.maketrans(
    {
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "st",
        "\ufb06": "st",
        "\u0132": "IJ",
        "\u0133": "ij",
    }
)


def clean_engine() -> str:
    """'ftfy X.Y' when LoTLIP's own cleaner is importable, else 'builtin'."""
    try:
        import ftfy
    except ImportError:
        return "builtin"
    return f"ftfy {ftfy.__version__}"


def clean_text(text: str) -> str:
    """LoTLIP's `basic_clean` + `whitespace_clean` (open_clip/tokenizer.py:66-75)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text).translate(_LIGATURES)
        text = _DOUBLE_QUOTES.sub('"', _SINGLE_QUOTES.sub("'", text))
    text = html.unescape(html.unescape(text))
    return " ".join(text.split())


def long_text_pieces(caption: str) -> list[str]:
    """A long benchmark caption as LoTLIP tokenizes it: one piece per sub-caption, each followed
    by [SEP] (`'. '.join(split_caption(caption))` then '. ' -> [SEP])."""
    return [clean_text(p) for p in lotlip_split(caption)]


def short_text_pieces(text: str) -> list[str]:
    """A short text (a COCO caption, a prompt) as LoTLIP's BERT tokenizer sees it: cut at every
    '. ' (tokenizer.py:468), nothing else."""
    return [clean_text(p) for p in text.split(". ")]
