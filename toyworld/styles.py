"""Caption styles of the toy captioners, one per family, written from a scene's truth.

The clause contract (what `toyworld.score` relies on to parse a caption back into objects):
- a caption is split into clauses at '.', ',' and ';';
- every object of the scene is mentioned in a clause of its own, and that clause holds the
  object's size word (`scenes.SIZES`), colour (`scenes.COLORS`), shape (`scenes.SHAPES`) and
  exactly one cell name as `scenes.cell_name` writes it ("top left", "center", "middle right"),
  names read longest first ("top center" is one name, not "center");
- no other clause holds a shape word, so a clause with a shape is an object and nothing else is.

Styles differ in order and phrasing, as different captioners' captions do:
- `by_position` (llava-1.5): every cell in reading order, one sentence per cell;
- `by_column` (qwen2-vl): every cell column by column, one sentence per column.

Both name every cell, the empty ones too ("The top center is empty.", "the middle left is
empty"), and name the cell before what it holds: a captioner then never has to work out which
occupied cell comes next, and it reads what a cell holds from the image token of the cell it has
just named, which is what lets a tiny model trained for minutes on a CPU reach the accuracy bar
(docs/RESULTS.md).

`accuracy` scores captions with the project scorer (`toyworld.score`), which reads any caption
that keeps the contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from toyworld.scenes import COLS, Scene, cell_name

_CELLS = sorted((cell_name(r, c) for r in range(3) for c in range(3)), key=len, reverse=True)
_CELL_RE = re.compile(r"\b(" + "|".join(_CELLS) + r")\b")
_READING_ORDER = [cell_name(r, c) for r in range(3) for c in range(3)]


def _count(n: int) -> str:
    return f"{n} object" if n == 1 else f"{n} objects"


def by_position(scene: Scene) -> str:
    """'The image shows a grey background. In the top left there is a large red circle. The top
    center is empty. ...': every cell in reading order, one sentence each."""
    at = {o.cell: o for o in scene.objects}
    parts = [f"The image shows a {scene.background} background."]
    for cell in _READING_ORDER:
        o = at.get(cell)
        where = "the center" if cell == "center" else f"the {cell}"
        parts.append(
            f"In {where} there is {o.phrase()}." if o else f"{where.capitalize()} is empty."
        )
    return " ".join(parts)


def by_column(scene: Scene) -> str:
    """'Shapes on a white background. Left column: the top left has a large red circle, the
    middle left is empty, the bottom left has a small blue bar. Center column: ...': every
    cell, column by column from left to right, one sentence per column."""
    at = {o.cell: o for o in scene.objects}
    parts = [f"Shapes on a {scene.background} background."]
    for col in range(3):
        cells = [cell_name(row, col) for row in range(3)]
        items = [f"the {c} has {at[c].phrase()}" if c in at else f"the {c} is empty" for c in cells]
        parts.append(f"{COLS[col].capitalize()} column: " + ", ".join(items) + ".")
    return " ".join(parts)


STYLES: dict[str, Callable[[Scene], str]] = {"llava-1.5": by_position, "qwen2-vl": by_column}


def accuracy(scenes: list[Scene], captions: list[str]) -> dict[str, float]:
    """The captioner bar's two figures, scored by `toyworld.score` over all scenes: the share of
    truth objects named correctly (shape + colour + cell) and the share of the captions' object
    mentions that are wrong (an object that is not there, or a real one in the wrong cell)."""
    from toyworld.score import score_captions

    (s,) = score_captions(("", c, sc) for sc, c in zip(scenes, captions, strict=True)).values()
    return {
        "objects": s.truth_objects,
        "correct": s.recall,
        "hallucinated": (s.hallucinated + s.misplaced) / max(s.mentions, 1),
    }
