"""Caption accuracy against a scene's truth: parse a caption back into objects and score them.

The contract with the captioners (toyworld/captioners.py): every object is mentioned in its own
clause (clauses end at '.', ',', ';', ':' and line breaks), a clause holding the object's size
word (small, medium or "medium-sized", large), its colour, its shape and one cell name as
`toyworld.scenes.cell_name` writes it ("top left", "center", "middle right"; "at top left" and
"in the top left" read the same). Both of these parse object by object:

    "The image shows 3 objects on a grey background. In the top left there is a large red circle."
    "3 shapes on a grey background: a large red circle at top left, a small blue bar at center."

Parsing is lenient (plurals, extra words, "centre", "top-left", "upper"/"lower" for top/bottom;
a plural counts as one mention); a clause with a colour and a shape but no
cell is still a mention, one that cannot be correct.

Scoring matches mentions to truth objects one to one: first exactly (shape + colour + cell:
`correct`), then the rest by shape + colour alone (`misplaced`: the object exists, the caption put
it in the wrong cell or in none). A mention left over names an object the scene does not have:
`hallucinated`. Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from toyworld.scenes import BACKGROUNDS, COLORS, COLS, ROWS, SHAPES, SIZES, Scene, cell_name

_CLAUSE_SPLIT = re.compile(r"[.,;:\n]+")
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_PLURALS = {f"{s}s": s for s in SHAPES}
_SIZE_WORDS = {**{s: s for s in SIZES}, "medium-sized": "medium", "mid-sized": "medium"}
_COL_WORDS = {"left": "left", "center": "center", "centre": "center", "right": "right"}
_ROW_WORDS = {
    "top": "top",
    "upper": "top",
    "middle": "middle",
    "bottom": "bottom",
    "lower": "bottom",
}
_GREY = {"gray": "grey"}  # spelling variants of background colours


@dataclass(frozen=True)
class Mention:
    """One object as a caption names it; `cell` and `size` are None where the clause has none."""

    shape: str
    color: str
    size: str | None = None
    cell: str | None = None


@dataclass
class ParsedCaption:
    """What a caption says: its object mentions and the background it names (None if none)."""

    mentions: list[Mention] = field(default_factory=list)
    background: str | None = None


def _words(clause: str) -> list[str]:
    """Lower-case words; hyphenated ones split ("top-left") unless they are a size word."""
    out: list[str] = []
    for w in _WORD.findall(clause):
        out += [w] if w in _SIZE_WORDS else w.split("-")
    return out


def _cells(words: list[str]) -> list[str]:
    """The cell names in a clause's words, in order ("top center" is one, not "center")."""
    found: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in _ROW_WORDS and nxt in _COL_WORDS:
            row, col = ROWS.index(_ROW_WORDS[w]), COLS.index(_COL_WORDS[nxt])
            found.append(cell_name(row, col))  # "middle center" reads as "center"
            i += 2
            continue
        if w in ("center", "centre"):
            found.append(cell_name(1, 1))
        i += 1
    return found


def parse_caption(text: str) -> ParsedCaption:
    """The object mentions and background of a caption (see the module docstring)."""
    parsed = ParsedCaption()
    for clause in _CLAUSE_SPLIT.split(text.lower()):
        words = [_GREY.get(w, w) for w in _words(clause)]
        if not words:
            continue
        if "background" in words or "backdrop" in words:
            bgs = [w for w in words if w in BACKGROUNDS]
            if bgs and parsed.background is None:
                parsed.background = bgs[0]
        # Each shape word closes a mention: the colour and size words since the previous one.
        mentions: list[Mention] = []
        color = size = None
        for w in words:
            if w in COLORS:
                color = w
            elif w in _SIZE_WORDS:
                size = _SIZE_WORDS[w]
            elif w in SHAPES or w in _PLURALS:
                if color is not None:
                    mentions.append(Mention(_PLURALS.get(w, w), color, size))
                color = size = None
        if not mentions:
            continue
        cells = _cells(words)
        if len(cells) == len(mentions):
            pairs = zip(mentions, cells, strict=True)
        elif len(cells) == 1:
            pairs = ((m, cells[0]) for m in mentions)
        else:  # no cell, or an ambiguous number of them: no mention of the clause is placed
            pairs = ((m, None) for m in mentions)
        parsed.mentions += [Mention(m.shape, m.color, m.size, c) for m, c in pairs]
    return parsed


@dataclass
class CaptionScore:
    """Counts for one caption (or, summed, for many); rates are derived, never stored."""

    captions: int = 0
    truth_objects: int = 0
    mentions: int = 0
    correct: int = 0  # shape + colour + cell
    correct_with_size: int = 0
    misplaced: int = 0  # the object exists, the cell is wrong or missing
    hallucinated: int = 0  # no object of that shape and colour is left to match
    background_right: int = 0

    def add(self, other: CaptionScore) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def recall(self) -> float | None:
        """Correct / truth objects."""
        return self.correct / self.truth_objects if self.truth_objects else None

    @property
    def hallucination_rate(self) -> float | None:
        """Hallucinated / mentions."""
        return self.hallucinated / self.mentions if self.mentions else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["recall"] = self.recall
        out["hallucination_rate"] = self.hallucination_rate
        # Hallucinated + misplaced is the stricter count: mentions that are not right as said.
        out["misplaced_rate"] = self.misplaced / self.mentions if self.mentions else None
        out["size_recall"] = (
            self.correct_with_size / self.truth_objects if self.truth_objects else None
        )
        out["background_accuracy"] = (
            self.background_right / self.captions if self.captions else None
        )
        return out


def score_caption(text: str, scene: Scene) -> CaptionScore:
    """Score one caption against its scene's truth (one-to-one matching, module docstring)."""
    parsed = parse_caption(text or "")
    left = list(scene.objects)
    unmatched: list[Mention] = []
    correct = correct_size = 0
    for m in parsed.mentions:
        hit = next(
            (o for o in left if (o.shape, o.color, o.cell) == (m.shape, m.color, m.cell)), None
        )
        if hit is None:
            unmatched.append(m)
            continue
        left.remove(hit)
        correct += 1
        correct_size += hit.size == m.size
    misplaced = 0
    for m in unmatched:
        hit = next((o for o in left if (o.shape, o.color) == (m.shape, m.color)), None)
        if hit is not None:
            left.remove(hit)
            misplaced += 1
    return CaptionScore(
        captions=1,
        truth_objects=len(scene.objects),
        mentions=len(parsed.mentions),
        correct=correct,
        correct_with_size=correct_size,
        misplaced=misplaced,
        hallucinated=len(unmatched) - misplaced,
        background_right=int(parsed.background == scene.background),
    )


def score_captions(pairs: Iterable[tuple[str, str, Scene]]) -> dict[str, CaptionScore]:
    """Aggregate scores per model from (model, caption, scene) triples, models sorted."""
    per_model: dict[str, CaptionScore] = {}
    for model, text, scene in pairs:
        per_model.setdefault(model, CaptionScore()).add(score_caption(text, scene))
    return dict(sorted(per_model.items()))
