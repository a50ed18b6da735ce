"""Clean the raw text an MLLM generated for an image before it is stored as a long caption.

`clean_caption` runs, in order:

1. `strip_chat_artefacts`: chat-template leftovers and special tokens (``</s>``, ``<|im_end|>``,
   ``[INST]``, ``<image>``, ...; each becomes a line break, a sentence boundary, never a
   space), a prompt echoed before the answer ("USER: ... ASSISTANT:"), a hallucinated next
   user turn, leading role tags ("ASSISTANT:", "### Assistant:", "GPT:", "Answer:"), a
   leading polite preamble ("Sure! Here is a detailed description of the image:"), markdown
   emphasis marks (``**bold**``, ``_it_``), runs of spaces, and a dangling opening quote or
   bracket at the end.
   Line breaks are kept: they separate list items, which the sub-caption splitter relies on.
2. `cut_repetition`: generation loops, the classic failure of greedy decoding in small models.
   Flag ``"repetition"``.
3. If the engine stopped at ``max_tokens`` (``finish_reason == "length"``): flag
   ``"truncated"`` and `drop_unfinished_sentence`; flag ``"unfinished_kept"`` when the text has
   no sentence end to cut back to.
4. Whitespace is normalised once more; an empty result has status ``"empty"``.

Design choices:

- Apart from the whitespace normalisation of `strip_chat_artefacts`, every function returns a
  prefix of, or spans cut out of, the text it was given: words are never re-joined, so the
  stored caption is what the model wrote, minus what was removed.
- Only the *start* of a caption is searched for boilerplate and role tags, with a short list of
  exact phrasings: a sentence such as "Sure enough, the dog ..." later on is content.
- Loops are found at three levels, each linear in the caption length:

  a. sentence repeats: a sentence (or list item) of >= 3 words whose words, lower-cased and with
     list markers and punctuation dropped, equal those of an earlier sentence is dropped. This
     also removes a cycle of 2-3 sentences ("A. B. C. B. C. B. C." -> "A. B. C."), and keeps
     the new sentences a model writes between repeats.
  b. consecutive n-grams: a run of 1 to 8 words repeated back to back ("a red car, a red car,
     a red car"), 3 times, or 4 times for a single word ("very, very, very old" is emphasis,
     "the the the the" is a loop). Words are compared lower-cased, without punctuation (a
     number such as "1,000,000" or "10:30" stays one word), across sentence ends.
  c. a recurring long n-gram: a 5-word sequence that occurs >= 4 times anywhere (with variations
     in between, which (a) and (b) miss): "a man wearing a hat and a bag, a man wearing a hat
     and shoes, ...". The count threshold grows with the text (one per 50 words) so that a long
     caption may say "on the left side of" a few times.

  Speed (millions of captions): every word becomes one character of a "token string" (same
  word, same character), built with str.translate/split/join in C, so that (b) is one regex
  with a back-reference comparing words at one character each and (c) a Counter of slices.
  The costlier searches run only after O(n) pre-checks in C (a sentence-level duplicate among
  the pieces between periods; a run of words frequent enough to form a loop). Measured with
  timeit on a 110-word caption, one core: about 60 us for `clean_caption` (75 us with
  ``finish_reason="length"``), 40 us of it in `cut_repetition`.

  A loop found by (b) or (c) is cut where its second occurrence starts, moved back to the last
  sentence end before that point when there is one: the sentence the loop started in is broken,
  the sentences before it are kept. Without a sentence end the first occurrence is kept
  ("a red car, a red car, ..." -> "a red car"). Passes repeat until nothing changes, so the
  result is a fixed point and cleaning it again flags nothing.
- Sentence ends are the splitter's (`shards.split.sentence_ends`, engine "rules", with the
  abbreviation lexicon of `shards.split_rules`), taken as character offsets into the text so
  that cleaning can cut a prefix: a caption is cut where it would be split, and "Dr.", "e.g.",
  "3.5", "No. 7", "J. R. Smith" or a list number "2." are no ends. A line break is also a
  boundary (list items). Special tokens, role words, wrappers and list markers come from
  `shards.text_rules`, the one home of the rules cleaning and splitting share.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from shards import text_rules as T
from shards.split import sentence_ends

__all__ = [
    "CleanResult",
    "clean_caption",
    "cut_repetition",
    "drop_unfinished_sentence",
    "strip_chat_artefacts",
]

# --------------------------------------------------------------------------------------------
# Chat artefacts
# --------------------------------------------------------------------------------------------

# Special tokens, role words and markers come from `shards.text_rules`, shared with the
# splitter. A special token becomes a line break, not a space and not nothing: it ends a turn or
# a sentence ("The dog runs</s>The cat sleeps" holds two), two words around it do not fuse, and
# removing one cannot form another ("<</s>/s>").
_ROLE_WORDS = T.words(T.ASSISTANT_ROLES + T.ANSWER_TAGS)
_USER_WORDS = T.words(T.USER_ROLES)
# A prompt echoed before the answer: only when the text starts with a user turn and an
# assistant turn follows it; the answer starts after the first assistant marker.
_PROMPT_ECHO = re.compile(
    rf"(?:<\|im_start\|>(?:system|user)|\[INST\]|(?:#{{1,3}}[ \t]*)?{_USER_WORDS}[ \t]*:)"
    rf".*?(?:<\|im_start\|>assistant|\[/INST\]|(?:#{{1,3}}[ \t]*)?{_ROLE_WORDS}[ \t]*:)",
    re.DOTALL,
)
# A next user turn the model went on to write after its answer: everything from it is dropped.
# Only at a line start (or the ChatML token anywhere): "a sign reading USER: admin" stays.
_NEXT_TURN = re.compile(
    rf"<\|im_start\|>(?:user|system)"
    rf"|\n[ \t]*(?:#{{1,3}}[ \t]*)?{_USER_WORDS}[ \t]*:|\n[ \t]*\[INST\]"
)
_LEAD_ROLE = re.compile(rf"(?:#{{1,3}}[ \t]*)?{_ROLE_WORDS}[ \t]*:\s*")
# Polite preambles: an interjection with its punctuation, then optionally "Here is a (detailed)
# description of the image:". Each part is optional but needs its exact phrasing.
_LEAD_POLITE = re.compile(r"(?:Sure|Certainly|Of course|Absolutely)(?:[ \t]*[!.,])+\s*")
_LEAD_HERE = re.compile(
    r"(?:[Hh]ere(?:[ \t]+is|'s|\u2019s)|[Bb]elow[ \t]+is)[ \t]+(?:a|an|the|my)[ \t]+"
    r"(?:[\w-]+[ \t]+){0,3}?(?:description|caption|summary)[ \t]+of[ \t]+(?:the|this)[ \t]+"
    r"(?:[\w-]+[ \t]+){0,2}?(?:image|picture|photo|photograph)[ \t]*[:.]\s*"
)
_BLANK_LINES = re.compile(r"\n{3,}")
_AMBIGUOUS_QUOTES = "\"'"


def _tidy_space(text: str) -> str:
    """Collapse runs of whitespace within a line to one space, keep line breaks (at most one
    blank line in a row), strip the ends. str.split/join: faster than a regex substitution."""
    if "\n" not in text and "\r" not in text:
        return " ".join(text.split())
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    text = "\n".join([" ".join(line.split()) for line in lines]).strip()
    return _BLANK_LINES.sub("\n\n", text) if "\n\n\n" in text else text


def _drop_dangling_opener(text: str) -> str:
    """Drop opening quotes/brackets left at the very end (a cut inside a quotation).

    A straight quote counts as opening only after a space: `He said "hi"` keeps its quote.
    """
    while text and (
        text[-1] in T.OPENERS
        or (text[-1] in _AMBIGUOUS_QUOTES and (len(text) == 1 or text[-2].isspace()))
    ):
        text = text[:-1].rstrip()
    return text


def strip_chat_artefacts(text: str) -> str:
    """Remove chat-template leftovers (each becomes a line break: a sentence boundary), leading
    role tags and preambles, and markdown emphasis marks.

    Runs of spaces collapse to one; line breaks are kept (at most one blank line in a row).
    """
    # The `in` tests are memchr scans: the regexes only run where they can match.
    if ":" in text or "<" in text or "[" in text:
        m = _PROMPT_ECHO.match(text.lstrip())
        if m is not None:
            text = text.lstrip()[m.end() :]
        m = _NEXT_TURN.search(text, 1)
        if m is not None:
            text = text[: m.start()]
    # Emphasis first: removing "**" could form a token ("<**/s>"), removing a token cannot form
    # emphasis.
    text = T.break_at_artefacts(T.strip_emphasis(text))
    text = _tidy_space(text)
    # Role tag and preamble can come in either order ("ASSISTANT: Sure! ..."): repeat.
    for _ in range(4):
        before = text
        for pattern in (_LEAD_ROLE, _LEAD_POLITE, _LEAD_HERE):
            m = pattern.match(text)
            if m is not None:
                text = text[m.end() :]
        if text == before:
            break
    return _drop_dangling_opener(text)


# --------------------------------------------------------------------------------------------
# Sentence ends
# --------------------------------------------------------------------------------------------


def _boundaries(text: str) -> list[int]:
    """Offsets where a sentence or a line ends (just after its last character), ascending:
    the splitter's own rules and abbreviations (`shards.split.sentence_ends`)."""
    return sentence_ends(text)


def _unfinished_cut(text: str) -> int | None:
    """Where to cut `text` to drop an unfinished last sentence: `len(text)` when it ends a
    sentence already, None when there is no sentence end to cut back to."""
    bounds = _boundaries(text)
    if bounds and bounds[-1] >= len(text.rstrip()):
        return len(text)
    # Cut back to the last boundary that leaves some text before it.
    for b in reversed(bounds):
        if text[:b].strip():
            return b
    return None


def drop_unfinished_sentence(text: str) -> str:
    """Drop the text after the last sentence end (or line break), e.g. a caption cut by
    ``max_tokens``. Returns `text` unchanged when it has no sentence end to cut back to."""
    cut = _unfinished_cut(text)
    if cut is None or cut >= len(text):
        return text
    return text[:cut].rstrip()


# --------------------------------------------------------------------------------------------
# Repetition
# --------------------------------------------------------------------------------------------

# Loop detection works on a "token string": each word of the caption, lower-cased and with its
# punctuation dropped, becomes one character (the same word, the same character), and every
# sentence end or line break becomes "\n". Regexes with back-references then compare whole
# words at the cost of one character each, and all per-word work runs in C (str.translate,
# str.split, dict, str.join, Counter): no Python loop over the words of a caption.
_PUNCT = (
    "\"#$%&'()*+,-/:;<=>@[\\]^`{|}~\u00ab\u00bb\u201c\u201d\u2018\u2019\u2013\u2014\u2022\u00b7"
)
_ENDS = ".!?\u2026\n"
_MARK = "\x01"
# Same length as the text, so that word offsets carry over: punctuation -> space, ends -> mark.
_TO_MARKED = str.maketrans({**dict.fromkeys(_PUNCT, " "), **dict.fromkeys(_ENDS, _MARK)})
_TO_PLAIN = str.maketrans(dict.fromkeys(_PUNCT + _ENDS, " "))
# Token characters, from U+0100 up (below the surrogates): "\n" and _MARK never collide.
_ID_CHARS = tuple(map(chr, range(0x100, 0x100 + 4096)))
_LIST_MARKER = T.list_marker(leading_space=True)
_NONSPACE = re.compile(r"\S+")
# A separator between digits; the pattern starts with the separator class (found fast), the
# digit before it is checked by a look-behind.
_IN_NUMBER = re.compile(r"[.,:](?<=\d.)(?=\d)")
_MAX_PASSES = 8  # each pass that changes the text shortens it


def _loop_patterns(max_ngram: int, min_repeats: int) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(one token repeated min_repeats + 1 times, 2..max_ngram tokens repeated min_repeats
    times), over a token string without sentence marks; group 1 is the first occurrence."""
    single = re.compile(rf"(.)\1{{{min_repeats},}}", re.DOTALL)
    multi = re.compile(rf"(.{{2,{max_ngram}}}?)\1{{{min_repeats - 1},}}", re.DOTALL)
    return single, multi


_DEFAULT_LOOPS = _loop_patterns(8, 3)


def _lower_same_length(text: str) -> str:
    """Lower-cased text, same length, with the separators inside numbers ("3.5", "1,000",
    "10:30") turned into "_" so that a number stays one word: "1,000,000,000" is no loop."""
    low = text.lower()
    if len(low) != len(text):
        # "İ".lower() is two characters; keep such characters so that offsets carry over.
        low = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
    return _IN_NUMBER.sub("_", low)


def _token_string(low: str) -> str:
    """One character per word of `low`, "\n" per sentence end or line break."""
    tokens = low.translate(_TO_MARKED).replace(_MARK, f" {_MARK} ").split()
    ids_chars = (
        _ID_CHARS
        if len(tokens) <= len(_ID_CHARS)
        else map(chr, range(0x10000, 0x10000 + len(tokens)))
    )
    # A word gets the character of its last position: distinct words, distinct characters.
    ids = dict(zip(tokens, ids_chars, strict=False))
    ids[_MARK] = "\n"
    return "".join(map(ids.__getitem__, tokens))


def _maybe_repeated_sentence(marked: str, min_words: int) -> bool:
    """Cheap pre-check for `_drop_repeated_sentences`: do two pieces between sentence marks
    (cut at every period, so finer than sentences) have the same words, possibly after a
    leading list number? False means the full check would find nothing either (up to pieces
    that a period such as "Dr." cuts below `min_words`)."""
    pieces = [p for p in marked.split("\n") if len(p) >= min_words]
    if len(set(pieces)) < len(pieces):
        return True
    tails = [p[1:] for p in pieces if len(p) > min_words]  # "(1) A red apple" vs "(2) ..."
    return len(set(tails)) < len(tails)


def _drop_repeated_sentences(text: str, low: str, min_words: int) -> str:
    """Drop each sentence/list item whose words repeat an earlier one's (>= min_words words).

    Each dropped piece takes the whitespace before it, so the text around stays as written.
    """
    bounds = _boundaries(text)
    if not bounds:
        return text
    seen: set[str] = set()
    drop: list[tuple[int, int]] = []
    for s, e in zip([0, *bounds], [*bounds, len(text)], strict=True):
        m = _LIST_MARKER.match(low, s, e)
        key = " ".join(low[m.end() if m else s : e].translate(_TO_PLAIN).split())
        if key.count(" ") + 1 < min_words:
            continue
        if key in seen:
            drop.append((s, e))
        else:
            seen.add(key)
    if not drop:
        return text
    parts: list[str] = []
    pos = 0
    for s, e in drop:
        parts.append(text[pos:s])
        pos = e
    parts.append(text[pos:])
    return "".join(parts).rstrip()


def _loop_index(
    plain: str,
    loops: tuple[re.Pattern[str], re.Pattern[str]],
    min_repeats: int,
    long_ngram: int,
    long_min_count: int,
    long_per_words: int,
) -> int | None:
    """Token index where the earliest loop's second occurrence starts, or None."""
    counts = Counter(plain)
    found: list[int] = []
    if max(counts.values(), default=0) > min_repeats:
        m = loops[0].search(plain)
        if m is not None:
            found.append(m.end(1))
    # Pre-checks in C for the costlier searches. A loop of n >= 2 words repeated r times is a
    # run of n * r words that each occur >= r times; a long n-gram occurring k >= r times is a
    # run of n such words. Mask those words and look for such runs: natural text rarely has
    # one (function words are frequent, content words are not), a loop always has.
    frequent = [ch for ch, c in counts.items() if c >= min_repeats]
    if not frequent:
        return min(found, default=None)
    masked = plain.translate(dict.fromkeys(map(ord, frequent), _MARK))
    if _MARK * (2 * min_repeats) in masked:
        m = loops[1].search(plain)
        if m is not None:
            found.append(m.end(1))
    need = max(long_min_count, len(plain) // long_per_words)
    if _MARK * long_ngram in masked and len(plain) >= long_ngram + need - 1:
        grams = Counter([plain[i : i + long_ngram] for i in range(len(plain) - long_ngram + 1)])
        for gram, c in grams.items():
            if c >= need and _cycles_alike(plain, gram):
                found.append(plain.find(gram, plain.find(gram) + 1))
    return min(found, default=None)


def _cycles_alike(plain: str, gram: str) -> bool:
    """Whether the stretches between successive occurrences of `gram` repeat each other, as a
    generation loop's cycles do: median similarity of neighbouring stretches >= 0.8, or >= 0.9
    for stretches of more than 12 words (a long cycle must come back almost verbatim).

    A caption that describes several objects with one template ("A red circle is located in the
    upper left of the frame, covering approx. 3% of the picture. A green square is located ...")
    repeats a long n-gram once per object, but what lies between the repeats (colour, shape,
    place, size: several words of a long stretch) changes; a loop ("a man wearing a blue hat and
    a bag, a man wearing a blue hat and shoes, ...") changes a word or two of a short one.
    """
    from difflib import SequenceMatcher
    from statistics import median

    starts, i = [], plain.find(gram)
    while i >= 0:
        starts.append(i)
        i = plain.find(gram, i + len(gram))
    cycles = [plain[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    ratios = [
        SequenceMatcher(None, a, b, autojunk=False).ratio()
        for a, b in zip(cycles, cycles[1:], strict=False)
    ]
    if not ratios:
        return False
    long_cycle = median(len(c) for c in cycles) > _SHORT_CYCLE_WORDS
    return median(ratios) >= (0.9 if long_cycle else 0.8)


_SHORT_CYCLE_WORDS = 12


def _cut_at_loop(text: str, loop_start: int) -> str:
    """Cut before a loop starting at `loop_start`: at the last sentence end before it, else
    at `loop_start` itself (keeping the first occurrence)."""
    cut = loop_start
    for b in reversed(_boundaries(text)):
        if b <= loop_start and text[:b].strip():
            cut = b
            break
    return _drop_dangling_opener(text[:cut].rstrip(" \t\n,;:-\u2013\u2014/&"))


def _one_pass(text: str, loops: tuple[re.Pattern[str], re.Pattern[str]], opts: _Opts) -> str:
    low = _lower_same_length(text)
    marked = _token_string(low)
    if _maybe_repeated_sentence(marked, opts.min_sentence_words):
        dropped = _drop_repeated_sentences(text, low, opts.min_sentence_words)
        if dropped != text:
            return dropped
    index = _loop_index(
        marked.replace("\n", ""),
        loops,
        opts.min_repeats,
        opts.long_ngram,
        opts.long_ngram_min_count,
        opts.long_ngram_per_words,
    )
    if index is None:
        return text
    # Rare path: the token index of the loop's second occurrence -> its offset in `text`.
    for k, m in enumerate(_NONSPACE.finditer(low.translate(_TO_PLAIN))):
        if k == index:
            return _cut_at_loop(text, m.start())
    return text  # unreachable: both tokenisations see the same words


@dataclass(frozen=True)
class _Opts:
    min_repeats: int
    long_ngram: int
    long_ngram_min_count: int
    long_ngram_per_words: int
    min_sentence_words: int


def cut_repetition(
    text: str,
    *,
    max_ngram: int = 8,
    min_repeats: int = 3,
    long_ngram: int = 5,
    long_ngram_min_count: int = 4,
    long_ngram_per_words: int = 50,
    min_sentence_words: int = 3,
) -> tuple[str, bool]:
    """Remove generation loops; return the text and whether anything was removed.

    Words are compared lower-cased and without punctuation.

    - A sentence (or list item) of at least `min_sentence_words` words that repeats an earlier
      one (also after a list marker) is dropped, with the whitespace before it.
    - A run of 2..`max_ngram` words repeated back to back `min_repeats` times, or a single word
      repeated `min_repeats` + 1 times, is a loop (sentence ends in between do not matter).
    - A `long_ngram`-word sequence occurring at least ``max(long_ngram_min_count,
      words // long_ngram_per_words)`` times is a loop.

    A loop is cut where its second occurrence starts, or at the last sentence end before that;
    the kept text is right-stripped of spaces and separators. Unchanged text is returned as is.
    """
    if min_repeats < 2 or max_ngram < 2 or long_ngram < 1:
        raise ValueError("min_repeats and max_ngram must be >= 2, long_ngram >= 1")
    if (max_ngram, min_repeats) == (8, 3):
        loops = _DEFAULT_LOOPS
    else:
        loops = _loop_patterns(max_ngram, min_repeats)
    opts = _Opts(
        min_repeats, long_ngram, long_ngram_min_count, long_ngram_per_words, min_sentence_words
    )
    flagged = False
    for _ in range(_MAX_PASSES):
        new = _one_pass(text, loops, opts)
        if new == text:
            break
        text, flagged = new, True
    return text, flagged


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanResult:
    """A cleaned caption: `text`, sorted unique `flags`, and `status` "ok" or "empty"."""

    text: str
    flags: list[str] = field(default_factory=list)
    status: str = "ok"


def clean_caption(text: str | None, finish_reason: str | None = None) -> CleanResult:
    """Clean one generated caption: artefacts -> repetition -> unfinished sentence -> spaces.

    Flags: "repetition" (a loop was removed), "truncated" (``finish_reason == "length"``),
    "unfinished_kept" (truncated, but no sentence end to cut back to).
    """
    flags: set[str] = set()
    if finish_reason == "length":
        flags.add("truncated")
    out = strip_chat_artefacts(text or "")
    if out:
        out, looped = cut_repetition(out)
        if looped:
            flags.add("repetition")
    if out and finish_reason == "length":
        cut = _unfinished_cut(out)
        if cut is None:
            flags.add("unfinished_kept")
        elif cut < len(out):
            out = out[:cut]
    out = _drop_dangling_opener(_tidy_space(out))
    return CleanResult(text=out, flags=sorted(flags), status="ok" if out else "empty")
