"""Scenes with truth: 2-6 flat objects on a 3x3 grid over a plain background.

A scene is plain data (`Scene`, `Obj`), serialisable to JSON (`to_dict` / `from_dict`), drawn by
`render` and summarised the way web alt-text summarises a picture: `alt_text` names only the most
salient object ("a large red circle"), as a short caption does in LoTLIP's Figure 1, so that a
model trained on alt-text alone learns little about the rest of the scene.

Every object sits in its own grid cell, so (colour, shape, cell) identifies it and a caption can be
checked object by object against the truth.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "bar")
SIZES = {"small": 0.22, "medium": 0.32, "large": 0.44}  # half-width, in cells
BACKGROUNDS = {"grey": (128, 128, 128), "white": (235, 235, 235), "black": (25, 25, 25)}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
SIZE_RANK = {name: i for i, name in enumerate(SIZES)}


def cell_name(row: int, col: int) -> str:
    """'top left' ... 'bottom right'; the middle cell is 'center'."""
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


@dataclass(frozen=True)
class Obj:
    """One object of a scene."""

    shape: str
    color: str
    size: str
    row: int
    col: int

    @property
    def cell(self) -> str:
        return cell_name(self.row, self.col)

    def phrase(self) -> str:
        """'a large red circle'."""
        return f"a {self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background and its objects in row-major order of their cells."""

    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(Obj(**o) for o in d["objects"])
        return cls(d["background"], tuple(sorted(objs, key=lambda o: (o.row, o.col))))

    def salient(self) -> Obj:
        """The largest object; among equals the first in reading order."""
        return max(self.objects, key=lambda o: (SIZE_RANK[o.size], -o.row, -o.col))


def sample_scene(rng: random.Random, min_objects: int = 2, max_objects: int = 6) -> Scene:
    """A random scene: background, then min..max objects in distinct cells."""
    n = rng.randint(min_objects, max_objects)
    cells = sorted(rng.sample(range(9), n))
    objs = tuple(
        Obj(
            shape=rng.choice(SHAPES),
            color=rng.choice(sorted(COLORS)),
            size=rng.choice(sorted(SIZES)),
            row=c // 3,
            col=c % 3,
        )
        for c in cells
    )
    return Scene(rng.choice(sorted(BACKGROUNDS)), objs)


def cell_labels(scene: Scene) -> tuple[list[int], list[int], list[int], int]:
    """Class labels of a scene for supervised pretraining, per cell in reading order: shape,
    colour and size indices (0 = empty cell, else 1 + index in SHAPES / sorted COLORS / SIZES),
    and the background's index in sorted BACKGROUNDS."""
    shape, color, size = [0] * 9, [0] * 9, [0] * 9
    for o in scene.objects:
        c = o.row * 3 + o.col
        shape[c] = 1 + SHAPES.index(o.shape)
        color[c] = 1 + sorted(COLORS).index(o.color)
        size[c] = 1 + list(SIZES).index(o.size)
    return shape, color, size, sorted(BACKGROUNDS).index(scene.background)


def alt_text(scene: Scene) -> str:
    """Web-style alt-text: the most salient object only ('a large red circle')."""
    return scene.salient().phrase()


def render(scene: Scene, size: int = 64, rng: random.Random | None = None):
    """The scene as an RGB PIL image of size x size pixels. With `rng`, each object is moved a
    little inside its cell (never out of it), so that no two renderings are pixel-identical."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in scene.objects:
        half = SIZES[o.size] * cell
        slack = max(0.0, cell / 2 - half - 1)
        dx = rng.uniform(-slack, slack) if rng else 0.0
        dy = rng.uniform(-slack, slack) if rng else 0.0
        cx, cy = (o.col + 0.5) * cell + dx, (o.row + 0.5) * cell + dy
        box = [cx - half, cy - half, cx + half, cy + half]
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], fill=fill)
        else:  # bar: full width, a third of the height
            draw.rectangle([box[0], cy - half / 3, box[2], cy + half / 3], fill=fill)
    return img
