"""The one home of the text rules that caption cleaning and sub-caption splitting share.

`recaption.clean` (cleaning a generated caption), `shards.split` (cutting it into sub-captions)
and `shards.assemble` (cleaning every caption it stores) read these rules from here and nowhere
else:

- chat artefacts: special tokens of the supported MLLM families (``</s>``, ``<|im_end|>``,
  ``<|endoftext|>``, ``<|eot_id|>``, ``[INST]``, ``<image>``, ...). An artefact is a turn or
  sentence boundary, so it becomes a line break, never a space: "The dog runs</s>The cat sleeps"
  is two sentences, not one;
- role words ("USER:", "ASSISTANT:", "### Human:", "GPT:", "Answer:");
- wrappers: the quotes, brackets and emphasis marks around a word ("(Dr.", "*etc.*");
- list markers: bullets (``-``, ``*``, ``•``) and numbers (``1.``, ``2)``, ``(3)``);
- markdown emphasis (``***both***``, ``**bold**``, ``__bold__``, ``*it*``, ``_it_``): the
  marks are dropped;
- emoticons (":)", ":-(", ";)", ":D", "<3"): a sentence end, kept with the sentence before.

The abbreviations (titles, units, "e.g.", "Inc.", ...) live in `shards.split_rules`, whose
`Lexicon` both the splitter and, through `shards.split.sentence_ends`, the cleaner use.
"""

from __future__ import annotations

import re

__all__ = [
    "ANSWER_TAGS",
    "ASSISTANT_ROLES",
    "BULLET_CHARS",
    "CLOSERS",
    "EMOTICON",
    "OPENERS",
    "SPECIAL",
    "SYSTEM_ROLES",
    "USER_ROLES",
    "WRAPPERS",
    "break_at_artefacts",
    "list_marker",
    "strip_emphasis",
    "words",
]

# Special tokens: LLaVA/Vicuna "</s>", Qwen/InternVL ChatML "<|im_start|>assistant",
# "<|im_end|>", "<|endoftext|>", Llama-3 "<|eot_id|>" (any "<|name|>"), Mistral/LLaVA-NeXT
# "[INST]", and the placeholders "<image>", "<unk>", "<pad>".
SPECIAL = re.compile(
    r"<\|im_start\|>(?:system|user|assistant)?|<\|[a-z_]+\|>|</?s>|<image>|<unk>|<pad>"
    r"|\[/?INST\]"
)

# Role words, in the spellings chat templates use. A user or system turn starts a new turn
# anywhere it follows a line start; an assistant tag starts the answer; the answer tags
# ("Answer:", a lower-case "assistant:") only count as the first word of an answer.
USER_ROLES: tuple[str, ...] = ("USER", "User", "HUMAN", "Human")
ASSISTANT_ROLES: tuple[str, ...] = ("ASSISTANT", "Assistant", "GPT")
SYSTEM_ROLES: tuple[str, ...] = ("SYSTEM", "System")
ANSWER_TAGS: tuple[str, ...] = ("assistant", "Answer", "ANSWER")

# Characters that wrap a word without being part of it: quotes, brackets, emphasis marks.
WRAPPERS = "\"'\u201c\u201d\u2018\u2019()[]{}*_"
# What may close a sentence after its terminator ('"Open."', "(a mat.)").
CLOSERS = "\"'\u201d\u2019)]"
# What may open a quotation or a bracket and dangle at the end of a cut text.
OPENERS = "([{<\u201c\u2018"

BULLET_CHARS = "-*+\u2022\u2023\u25e6\u25aa\u00b7"  # - * + • ‣ ◦ ▪ ·
# A numbered list marker: "1.", "2)", "(3)"; at most 3 digits, so "2024." is a year.
NUMBER_MARKER = r"\(?\d{1,3}[.)]"

# Emoticons: ":)", ":-(", ";)", ":D", ":P", "=)", "<3", "^^". One ends a sentence like "!" when a
# space and a capital follow ("happy :) It wags"); it belongs to the sentence before it. The
# pattern starts with a character class (the look-behinds come after it) so that the regex
# engine can scan for that class first: an alternation at the start is 5x slower.
EMOTICON = r"[:;=<^](?:(?<=[:;=])[-'^o]?[)(\]\[DPpOo3/|*]|(?<=<)3|(?<=\^)_?\^)(?![\w/])"

# Emphasis: a pair of marks around text on one line. Single marks need a non-word character
# (or the line edge) outside them, so "IMG_2041_a.jpg", "snake_case" and "5*3*2" keep theirs;
# a bullet "* item" has a space after its mark and is no emphasis.
_EMPHASIS = re.compile(
    r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*"
    r"|\*\*(?=\S)(.+?)(?<=\S)\*\*"
    r"|__(?=\S)(.+?)(?<=\S)__"
    r"|(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])"
    r"|(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])"
)


def words(alternatives: tuple[str, ...]) -> str:
    """A regex alternation of literal words: ``words(("A", "B")) == "(?:A|B)"``."""
    return "(?:" + "|".join(map(re.escape, alternatives)) + ")"


def list_marker(*, leading_space: bool = False) -> re.Pattern[str]:
    """A list marker with the space after it: a bullet or a number ("- ", "2) ", "(3) ").

    `leading_space` also takes the whitespace before it (a marker found at any offset).
    """
    lead = r"\s*" if leading_space else ""
    return re.compile(rf"{lead}(?:[{re.escape(BULLET_CHARS)}]|{NUMBER_MARKER})\s+")


def break_at_artefacts(text: str) -> str:
    """Every chat artefact replaced by a line break (a boundary); the rest untouched."""
    if "<" in text or "[" in text:  # memchr scans: the regex only runs where it can match
        return SPECIAL.sub("\n", text)
    return text


def _unwrap(m: re.Match[str]) -> str:
    return next(g for g in m.groups() if g is not None)


def strip_emphasis(text: str) -> str:
    """Drop markdown emphasis marks around text ("**red**", "_red_" -> "red"); a stray
    "**" left without its pair is dropped too, a lone "*" or "_" is kept."""
    if "*" not in text and "_" not in text:
        return text
    text = _EMPHASIS.sub(_unwrap, text)
    return text.replace("**", "") if "**" in text else text
