"""Caption styles of the toy captioners, one per family, written from a scene's truth.

The clause contract (what `toyworld.score` relies on to parse a caption back into objects):
- a caption is split into clauses at '.', ',' and ';';
- every object of the scene is mentioned in a clause of its own, and that clause holds the
  object's size word (`scenes.SIZES`), colour (`scenes.COLORS`), shape (`scenes.SHAPES`) and
  exactly one cell name as `scenes.cell_name` writes it ("top left", "center", "middle right"),
  names read longest first ("top center" is one name, not "center");
- no other clause holds a shape word, so a clause with a shape is an object and nothing else is.

Styles differ in order and phrasing, as different captioners' captions do:
- `by_position` (llava-1.5): reading order, one sentence per object;
- `by_column` (qwen2-vl): one sentence listing the objects column by column, left to right.

`accuracy` scores captions with the project scorer (`toyworld.score`), which reads any caption
that keeps the contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from toyworld.scenes import Scene, cell_name

_CELLS = sorted((cell_name(r, c) for r in range(3) for c in range(3)), key=len, reverse=True)
_CELL_RE = re.compile(r"\b(" + "|".join(_CELLS) + r")\b")


def _count(n: int) -> str:
    return f"{n} object" if n == 1 else f"{n} objects"


def by_position(scene: Scene) -> str:
    """'The image shows 3 objects on a grey background. In the top left there is a large red
    circle. In the center there is a small blue bar. ...' in reading order."""
    parts = [f"The image shows {_count(len(scene.objects))} on a {scene.background} background."]
    for o in sorted(scene.objects, key=lambda o: (o.row, o.col)):
        where = "In the center" if o.cell == "center" else f"In the {o.cell}"
        parts.append(f"{where} there is {o.phrase()}.")
    return " ".join(parts)


def by_column(scene: Scene) -> str:
    """'3 shapes on a grey background, from left to right: a large red circle at top left, a
    medium green bar at center, and a small blue square at bottom right.'"""
    objs = sorted(scene.objects, key=lambda o: (o.col, o.row))
    items = [f"{o.phrase()} at {o.cell}" for o in objs]
    if len(items) > 1:
        items[-1] = "and " + items[-1]
    n = len(objs)
    head = f"{n} shape" if n == 1 else f"{n} shapes"
    return (
        f"{head} on a {scene.background} background, from left to right: " + ", ".join(items) + "."
    )


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
