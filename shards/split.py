"""Split an MLLM image caption into its sentences ("sub-captions").

LoTLIP and DreamLIP cut long captions with ``re.split(r'\\n|</s>|[.]', text)``, which also cuts
"3.5 km", "Dr. Smith", "www.example.com" and "e.g." apart. `split_caption` keeps those whole:

    >>> split_caption("The image shows Dr. Lee at 10:30 a.m. on a 3.5 km trail.</s>")
    ['The image shows Dr. Lee at 10:30 a.m. on a 3.5 km trail.']

What it does, in order (the same for engines "rules" and "punkt"; engine "regex" is LoTLIP's
`re.split` alone, `lotlip_split`):

1. Model artefacts become line breaks: ``</s>``, ``<s>``, ``<|im_end|>``, ``<|endoftext|>``,
   ``<|im_start|>assistant``, ``<image>``, ``[INST]``; role tags (``USER:``, ``ASSISTANT:``,
   ``### Assistant:``) are removed at the start of a line or of a sentence. The words of a user
   prompt, if the caption holds one, are kept like any other sentence. These rules, like the
   list markers and emphasis marks below, live in `shards.text_rules`, shared with cleaning.
2. Markdown: emphasis marks (``**bold**``, ``__bold__``, ``*it*``, ``_it_``) and ``#`` heading
   marks are dropped (`SplitterConfig.strip_markdown`).
3. Every line break is a boundary. A line that starts with a list marker is one item: bullets
   (``-``, ``*``, ``+``, ``•``) and numbers (``1.``, ``2)``, ``(3)``) are dropped and the text
   kept, as are the numbers of an inline list ("Items: 1. A car. 2. A bus.", which starts a
   new line at ": 1.").
4. Each line is cut at its sentence ends (engine "rules" or "punkt", below).
5. A quotation cut inside ("a sign reading "Open. Come in." hangs") is joined back up.
6. Pieces are stripped; pieces with no letter or digit ("---", "...") are dropped.

Engine "rules" (the default) scans each line with one compiled regex for candidate ends (a run of
``.``, ``!``, ``?`` or ``…`` and an emoticon after it, or an emoticon alone (":)", ":-(",
";)", ":D"), closing quotes, then a space or a capital letter) and judges each candidate from
the word before it and the word after it, with the lexicon of `shards.split_rules`: over 10x
the speed of an untrained nltk Punkt (bench/split.py). A candidate followed by a lower-case
word is no boundary ("Yahoo! logo", "and so on... the"), unless that word is a camel-case brand
("iPhone", "eBay") or the whole caption is lowercase output (its first letter is lower case
and no sentence in it starts with a capital): then the next word is judged as if capitalised.
Otherwise ``!``, ``?`` and emoticons always cut (an emoticon stays with the sentence before
it), an ellipsis cuts before a capital, and a period cuts unless the word before it is

- a title or connective ("Dr.", "e.g.", "vs.", "Sra.", "Dott.", "z.B.", "bzw."): never a
  boundary;
- an abbreviation ("etc.", "U.S.", "Inc.", "Av.", "S.A.", "Hauptstr.", an initial "J.",
  "27 in."): a boundary only before a known sentence starter ("The", "It", ...), or (not in
  lowercase output) before any capitalised word after "etc.", "a.m." and "p.m.";
- "No."/"Nr."/"Vol."/"p." before a number, or the number of an inline list ("2. A bus");
- glued to the next word ("J.K.", "www.Amazon.com"): a boundary only for "word.Word" typos
  ("windowsill.The", "15.The").
Engine "punkt" runs nltk's `PunktSentenceTokenizer` with the same lexicon as its parameters.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from shards import text_rules as T
from shards.split_rules import (
    DEFAULT_CONFIG,
    STREET_SUFFIXES,
    WEAK_STARTERS,
    Lexicon,
    SplitterConfig,
    build_lexicon,
)

if TYPE_CHECKING:  # nltk costs a second to import; only engine "punkt" needs it
    from nltk.tokenize.punkt import PunktSentenceTokenizer

__all__ = ["ENGINES", "Engine", "SplitterConfig", "lotlip_split", "sentence_ends", "split_caption"]

Engine = Literal["rules", "punkt", "regex"]
ENGINES: tuple[str, ...] = ("rules", "punkt", "regex")

# A role tag is a turn boundary, so it becomes a line break, but only where a turn can begin:
# at a line start or after a sentence end (`_role_break` looks back). The pattern starts with
# the role word so that the regex engine skips ahead on its first letter: a pattern that starts
# with the context (`^|(?<=...)`) is tried at every position, ten times slower.
_ROLE = re.compile(rf"{T.words(T.USER_ROLES + T.ASSISTANT_ROLES + T.SYSTEM_ROLES)}[ \t]*:")
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE)
# "The items are: 1. A pen. 2. A cup." is a list written on one line; start it on a new line.
_INLINE_LIST = re.compile(r":[ \t]+(?=1[.)][ \t])")
_BULLET = T.list_marker()
_PIECE_MARKER = re.compile(rf"{T.NUMBER_MARKER}(?:\s+|(?=[A-Z]))")
_HAS_ALNUM = re.compile(r"[^\W_]").search

# A candidate end: terminators, closing quotes/brackets, then a space or (typo) a capital; the
# lookahead captures the next word and a period right after it (the "A." of "J. A. Smith" is an
# initial, not the sentence starter "A"), saving a second regex call per candidate.
_CAND_TAIL = (
    rf"([{re.escape(T.CLOSERS)}]*)(?:(\s+)|(?=[A-Z]))"
    r"(?=[\"'\u201c\u2018(\[]*(\w*)(\.?))"
)
_CAND = re.compile(r"([.!?\u2026]+)" + _CAND_TAIL)
# The same with emoticons (":)" alone or after a terminator), for the few lines that hold one:
# the alternation costs the regex its fast first-character scan, 3x slower on every line.
_CAND_EMOTICON = re.compile(rf"((?:[.!?\u2026]+(?:[ \t]+{T.EMOTICON})?)|{T.EMOTICON})" + _CAND_TAIL)
_HAS_EMOTICON = re.compile(T.EMOTICON).search
_TERMINATORS = ".!?\u2026"
# A sentence that starts with a capital (or a digit): its absence marks all-lowercase output.
_CAPITAL_START = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*\s+[\"'\u201c\u2018(\[]*[A-Z]")
_FIRST_LETTER = re.compile(r"[^\W\d_]")
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # "u.s", "a.m", "j.r": acronyms and initials
_NUM_UNIT = re.compile(r"\d+(?:[.,]\d+)?-?([a-z]+)")  # "5ft", "27-in"
# Punkt needs a space after a sentence end; put one into "windowsill.The" and "Wow!Look".
# Not before a word with a period of its own ("www.Amazon.com").
_PUNKT_NOSPACE = re.compile(r"(?<=[^\W_]{2}[.!?])(?=[A-Z][a-z]*(?![\w.]))|(?<=[!?])(?=[A-Z])")
_MARKER_ONLY = re.compile(T.NUMBER_MARKER)
_HAS_TERMINATOR = re.compile(r"[.!?\u2026]").search
_LOTLIP_SPLIT = re.compile(r"\n|</s>|[.]").split


def _is_abbreviation(lex: Lexicon, line: str, start: int, ws: int, word: str, low: str) -> bool:
    """Whether `word` (the token before a period at `ws`) is an abbreviation here."""
    if low in lex.ordinary or low in lex.final_prone:
        return True
    if len(word) == 1:
        return word.isupper()  # an initial; a lone lower-case letter is a word
    if "." in low and _DOTTED.fullmatch(low):
        return True
    if low in lex.units:  # "27 in." but not "to sit in."
        before = line[start : max(ws - 1, start)].rstrip()
        return before[-1:].isdigit()
    if low[:1].isdigit():
        m = _NUM_UNIT.fullmatch(low)
        return m is not None and m.group(1) in lex.units
    return low.endswith(STREET_SUFFIXES) and word[:1].isupper()  # "Hauptstr. 12"


def _run_together(word: str, after: str, dotted: str) -> bool:
    """Whether "word.After", with no space, is two sentences ("windowsill.The", "15.The")
    rather than one token ("J.K.", "U.S.A", "www.Amazon.com", "IMG_2041.JPG")."""
    if dotted or not (word.isdigit() or (len(word) > 1 and word.isalpha())):
        return False
    return len(after) == 1 or after[1:].islower()


def _is_boundary(lex: Lexicon, line: str, start: int, m: re.Match[str], lower: bool) -> bool:
    """Whether candidate `m` in `line`, in the sentence begun at `start`, ends that sentence.

    `lower`: the caption is all-lowercase output, whose sentences start in lower case.
    """
    term, _, space, after, dotted = m.groups()
    first = after[:1]
    if first.islower():
        if lower and space is not None:
            after = first.upper() + after[1:]  # judged as if the model had capitalised it
        elif not (space is not None and any(map(str.isupper, after[1:]))):
            # A lower-case word never starts a sentence of a caption, unless it is a brand
            # written in camel case ("iPhone", "eBay").
            return False
        first = "A"
    if term != ".":
        if term[0] not in _TERMINATORS:
            # An emoticon alone ("happy :) It", "smiles:) Toys"): an end unless it opens the
            # sentence.
            return m.start() > start
        if "!" in term or "?" in term or term[-1] not in _TERMINATORS:
            return True  # "!", "?", or a terminator with an emoticon ("view! :)")
        return first.isupper()  # "..", "...", "…": ends only before a capital
    p = m.start()
    ws = line.rfind(" ", start, p) + 1
    if ws < start:
        ws = start
    word = line[ws:p].strip(T.WRAPPERS)
    if not word:
        return True
    low = word.lower()
    if low in lex.never_final:
        return False
    if space is None and not _run_together(word, after, dotted):
        return False
    if first.isdigit() and low in lex.numbered:  # "No. 7"
        return False
    if ws == start and word.isdigit() and len(word) <= 3:  # inline list: "... car. 2. A bus"
        return False
    if not _is_abbreviation(lex, line, start, ws, word, low):
        return True
    # An abbreviation ends a sentence only when the next word evidently starts one.
    if after in lex.starters and not (len(after) == 1 and dotted):
        return not (lower and after in WEAK_STARTERS)
    # After "etc."/"a.m." any capitalised word starts a sentence; not so in lowercase output,
    # where "etc. cover the cushions" is one sentence.
    return low in lex.final_prone and not lower and first.isupper() and after[1:2].islower()


def _is_lowercase_output(text: str) -> bool:
    """Whether a caption was written all in lower case: its first letter is lower case and
    no sentence in it starts with a capital (a proper noun inside does not count)."""
    m = _FIRST_LETTER.search(text)
    return m is not None and m.group().islower() and _CAPITAL_START.search(text) is None


def _rule_spans(lex: Lexicon, line: str, lower: bool = False) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    # `in` tests are memchr scans, much cheaper than a regex search on lines without emoticons.
    maybe = ":" in line or ";" in line or "=" in line or "<3" in line or "^" in line
    cand = _CAND_EMOTICON if maybe and _HAS_EMOTICON(line) else _CAND
    for m in cand.finditer(line):
        if _is_boundary(lex, line, start, m, lower):
            spans.append((start, m.end(2)))
            start = m.end(2) if m.group(3) is None else m.end(3)
    if start < len(line):
        spans.append((start, len(line)))
    return spans


def _punkt_spans(tokenizer: PunktSentenceTokenizer, line: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    marker = -1  # start of a pending inline list number ("2.") that Punkt cut off on its own
    for s, e in tokenizer.span_tokenize(line):
        if spans and line[s : s + 1].islower():  # same rule as the rules engine
            spans[-1] = (spans[-1][0], e)
        elif _MARKER_ONLY.fullmatch(line, s, e):
            marker = s if marker < 0 else marker
        else:
            spans.append((s if marker < 0 else marker, e))
            marker = -1
    if marker >= 0:
        spans.append((marker, len(line)))
    return spans


def _quote_open(text: str) -> bool:
    return text.count('"') % 2 == 1 or text.count("\u201c") > text.count("\u201d")


def _merge_quoted(line: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join pieces cut inside a quotation, if the quotation closes within a few pieces."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(spans)
    while i < n:
        j = i
        if _quote_open(line[spans[i][0] : spans[i][1]]):
            # Give up on an unbalanced quote (a stray mark or an inch sign) after 4 pieces.
            for k in range(i + 1, min(n, i + 5)):
                if not _quote_open(line[spans[i][0] : spans[k][1]]):
                    j = k
                    break
        out.append((spans[i][0], spans[j][1]))
        i = j + 1
    return out


def _role_break(m: re.Match[str]) -> str:
    text, i = m.string, m.start() - 1
    while i >= 0 and text[i] in " \t#":  # "### Assistant:"; the "###" left is dropped later
        i -= 1
    return "\n" if i < 0 or text[i] in "\n\r.!?" else m.group()


def _lines(lex: Lexicon, text: str) -> list[str]:
    """Steps 1-3: artefacts out, markdown out, one string per line without its list marker."""
    text = T.break_at_artefacts(text)
    if ":" in text:
        text = _ROLE.sub(_role_break, text)
    if ": 1" in text:
        text = _INLINE_LIST.sub(":\n", text)
    if lex.strip_markdown:
        text = T.strip_emphasis(text)
        if "#" in text:
            text = _HEADING.sub("", text)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            m = _BULLET.match(line)
            lines.append(line[m.end() :] if m else line)
    return lines


def _pieces(line: str, spans: list[tuple[int, int]], out: list[str]) -> None:
    """Steps 5-6, appending the finished pieces of `line` to `out`."""
    if len(spans) > 1 and ('"' in line or "\u201c" in line):
        spans = _merge_quoted(line, spans)
    for s, e in spans:
        piece = line[s:e].strip()
        if piece[:1].isdigit():
            m = _PIECE_MARKER.match(piece)
            if m:
                piece = piece[m.end() :]
        if piece[:1].isalnum() or _HAS_ALNUM(piece):
            out.append(piece)


def sentence_ends(text: str, config: SplitterConfig | None = None) -> list[int]:
    """Offsets in `text` just after each sentence end (its terminator and closing quotes or
    brackets) and of each line break, ascending, as engine "rules" judges them.

    `text` is taken as it is (no artefacts or markers removed), so that a caller can cut it at
    these offsets: `recaption.clean` does, with the same lexicon as the splitter. A terminator
    at the end of a line counts as an end when it would end a sentence before "The" (so "It is
    made in the U.S." ends, "built by Dr." does not).
    """
    lex = _DEFAULT_LEXICON if config is None else build_lexicon(config)
    lower = _is_lowercase_output(text)
    out: list[int] = []
    offset = 0
    for line in text.split("\n"):
        if line and _HAS_TERMINATOR(line):
            # The sentinel word stands for a following sentence; its own span is never an end.
            out.extend(offset + e for _, e in _rule_spans(lex, line + " The", lower)[:-1])
        offset += len(line) + 1
        if offset <= len(text):
            out.append(offset - 1)
    return out


def lotlip_split(text: str) -> list[str]:
    """LoTLIP's and DreamLIP's sub-captions: ``re.split(r'\\n|</s>|[.]', text)``, pieces
    stripped, empty ones dropped.

    Kept exactly for comparisons with LoTLIP's Table 1 (engine "regex"): it also cuts "3.5 km",
    "Dr. Lee" and "www.example.com", and keeps every other artefact. Source:
    wuw2019/LoTLIP@301b906 dataloaders/dci_retrieval.py:40-48 (`split_caption`, the same in
    iiw_retrieval.py:54, share4v.py:30, urban1k.py:29; LoTLIP's training loader is not
    released) and zyf0619sjtu/DreamLIP@d2aeea8 training/data.py:202-210 (the same at lines
    348 and 453).
    """
    return [p for p in (q.strip() for q in _LOTLIP_SPLIT(text)) if p]


@lru_cache(maxsize=8)
def _punkt_tokenizer(config: SplitterConfig) -> PunktSentenceTokenizer:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(build_lexicon(config).punkt_parameters())


_DEFAULT_LEXICON = build_lexicon(DEFAULT_CONFIG)


def split_caption(
    text: str, engine: Engine = "rules", config: SplitterConfig | None = None
) -> list[str]:
    """The sub-captions of `text`: stripped, non-empty, in order, artefacts removed.

    `engine` is "rules" (fast, the default), "punkt" (nltk Punkt with the same lexicon) or
    "regex" (LoTLIP's `re.split`, `lotlip_split`; `config` does not apply). `config` adds
    abbreviations and sentence starters. Non-string or blank input gives [].
    """
    if not isinstance(text, str) or not text or text.isspace():
        return []
    if engine == "regex":
        return lotlip_split(text)
    cfg = DEFAULT_CONFIG if config is None else config
    lex = _DEFAULT_LEXICON if config is None else build_lexicon(config)
    out: list[str] = []
    if engine == "rules":
        lower = _is_lowercase_output(text)
        for line in _lines(lex, text):
            _pieces(line, _rule_spans(lex, line, lower), out)
    elif engine == "punkt":
        tokenizer = _punkt_tokenizer(cfg)
        for line in _lines(lex, text):
            line = _PUNKT_NOSPACE.sub(" ", line)
            _pieces(line, _punkt_spans(tokenizer, line), out)
    else:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    return out
