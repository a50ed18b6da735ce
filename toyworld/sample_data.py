"""A generated sample dataset: images drawn with Pillow and captions that describe them.

Used by `make demo`, the tests and the benchmarks, so nothing is downloaded. Each image holds a
few coloured shapes on a background; its raw caption is short (alt-text style) and its long
captions, one per pretend model, describe every shape in MLLM style, with the abbreviations,
decimals and lists that make sentence splitting hard. Same seed, same files. Colours, shapes
and backgrounds are `toyworld.scenes`' tables, the toy world's only ones.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from toyworld.scenes import BACKGROUNDS, COLORS, SHAPES


def _where(x: float, y: float) -> str:
    vert = "upper" if y < 0.4 else "lower" if y > 0.6 else "middle"
    horiz = "left" if x < 0.4 else "right" if x > 0.6 else "center"
    return "center" if vert == "middle" and horiz == "center" else f"{vert} {horiz}"


def _draw(rng: random.Random, size: int) -> tuple[Any, list[dict[str, Any]], str]:
    from PIL import Image, ImageDraw

    bg = rng.choice(sorted(BACKGROUNDS))
    img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
    draw = ImageDraw.Draw(img)
    shapes = []
    for _ in range(rng.randint(1, 4)):
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        r = rng.uniform(0.08, 0.22)
        x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
        box = [(x - r) * size, (y - r) * size, (x + r) * size, (y + r) * size]
        if shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (x * size, box[1])], COLORS[color])
        else:
            draw.rectangle([box[0], y * size - 4, box[2], y * size + 4], fill=COLORS[color])
        shapes.append({"color": color, "shape": shape, "size": r * 2, "where": _where(x, y)})
    return img, shapes, bg


def _raw_caption(rng: random.Random, shapes: list[dict[str, Any]]) -> str:
    first = shapes[0]
    forms = [
        f"{first['color']} {first['shape']} on a plain background",
        f"abstract art with a {first['color']} {first['shape']}",
        f"{len(shapes)} shapes, stock image",
    ]
    return rng.choice(forms)


# Caption styles of the sample's long captions, one per model in turn: LLaVA-like sentences,
# a Qwen-like numbered list, a ShareGPT4V-like paragraph.
STYLES = ("llava", "qwen", "prose")


def _long_caption(rng: random.Random, shapes, bg: str, style: str) -> str:
    n = len(shapes)
    if style == "llava":
        s = "s" * (n > 1)
        parts = [f"The image features {n} simple geometric shape{s} on a {bg} background."]
        for s in shapes:
            pct = 100 * s["size"] ** 2
            parts.append(
                f"A {s['color']} {s['shape']} is located in the {s['where']} of the frame, "
                f"covering approx. {pct:.1f}% of the picture."
            )
        parts.append(
            rng.choice(
                [
                    "The overall composition is minimal, e.g. there is no text or people.",
                    "The scene looks like a diagram, i.e. it was likely drawn by a computer.",
                    "There are no other objects, e.g. no furniture, plants, etc. in the image.",
                ]
            )
        )
        return " ".join(parts)
    if style == "prose":
        # A ShareGPT4V-style paragraph: the objects in running prose, sizes in words.
        s = "s" * (n > 1)
        parts = [f"In this image, {n} flat shape{s} stand out against a plain {bg} backdrop."]
        for i, s in enumerate(shapes):
            size = "large" if s["size"] > 0.3 else "small" if s["size"] < 0.18 else "medium-sized"
            lead = "First, there is" if i == 0 else rng.choice(["There is also", "Next to it is"])
            parts.append(f"{lead} a {size} {s['color']} {s['shape']} toward the {s['where']}.")
        parts.append(rng.choice(["The style is clean and graphic.", "Nothing else is shown."]))
        return " ".join(parts)
    # A Qwen-style answer with a numbered list.
    lines = [f"This picture shows {n} shape{'s' * (n > 1)} on a {bg} background:"]
    for i, s in enumerate(shapes, start=1):
        lines.append(
            f"{i}. A {s['color']} {s['shape']} in the {s['where']}, "
            f"about {s['size']:.2f} of the width."
        )
    lines.append(
        rng.choice(["The edges are sharp and the colors are flat.", "No text is visible."])
    )
    return "\n".join(lines)


def make_sample(
    out_dir: str | Path,
    n: int = 200,
    seed: int = 0,
    size: int = 96,
    models: tuple[str, ...] = ("llava", "qwen"),
    bad_rows: bool = True,
) -> Path:
    """Write `n` images and `manifest.jsonl` under out_dir; return the manifest path.

    With `bad_rows`, three extra rows exercise failure recording: a truncated JPEG, a missing
    image file and an empty caption.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        img, shapes, bg = _draw(rng, size)
        rel = f"images/{i:06d}.jpg"
        img.save(out / rel, format="JPEG", quality=90)
        longs = {
            m: _long_caption(rng, shapes, bg, STYLES[k % len(STYLES)]) for k, m in enumerate(models)
        }
        rows.append(
            {
                "key": f"{i:06d}",
                "image_path": rel,
                "caption": _raw_caption(rng, shapes),
                "source": "synthetic-a" if i % 3 else "synthetic-b",
                "long_captions": longs,
            }
        )
    if bad_rows:
        buf = io.BytesIO()
        img, _, _ = _draw(rng, size)
        img.save(buf, format="JPEG")
        (out / "images/truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        rows.append({"key": "truncated", "image_path": "images/truncated.jpg", "caption": "cut"})
        rows.append({"key": "missing", "image_path": "images/nope.jpg", "caption": "gone"})
        (out / "images/empty.jpg").write_bytes((out / rows[0]["image_path"]).read_bytes())
        rows.append({"key": "empty", "image_path": "images/empty.jpg", "caption": ""})
    manifest = out / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return manifest


def synthetic_long_captions(n: int, seed: int = 0, target_chars: int = 360) -> list[str]:
    """`n` MLLM-style long captions of about `target_chars` characters (~100 BERT tokens at 360).

    Text only, no images: for benchmarks of splitting and counting.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target_chars:
            shapes = [
                {
                    "color": rng.choice(sorted(COLORS)),
                    "shape": rng.choice(SHAPES),
                    "size": rng.uniform(0.1, 0.4),
                    "where": _where(rng.random(), rng.random()),
                }
                for _ in range(rng.randint(1, 3))
            ]
            style = rng.choice(["llava", "qwen"])
            parts.append(_long_caption(rng, shapes, rng.choice(sorted(BACKGROUNDS)), style))
        out.append(" ".join(parts)[: target_chars + 80])
    return out
