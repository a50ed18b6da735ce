"""Toy samples from scenes with truth: images, web-style alt-text and the truth as JSON.

`make_scene_samples` writes rendered scenes (`toyworld.scenes.render`) and a manifest whose rows
carry the raw caption (`alt_text`: the most salient object only) and the scene as a `truth`
column, which ingest and assembly carry to the output shards (docs/FORMAT.md) so that captions
can be scored against it (`toyworld.score`). There are no long captions: those are the
captioners' job. Same seed, same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from toyworld.scenes import Scene, alt_text, render, sample_scene

SOURCE = "toyworld"


def scene_rows(n: int, seed: int = 0) -> list[tuple[Scene, random.Random]]:
    """`n` scenes, each with the generator state that renders it (so jitter is reproducible)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        out.append((scene, random.Random(rng.getrandbits(64))))
    return out


def make_scene_samples(out_dir: str | Path, n: int = 40, seed: int = 0, size: int = 64) -> Path:
    """Write `n` scene images (PNG, so colours stay exact) and `manifest.jsonl` under out_dir;
    return the manifest path. Each row: key, image_path, caption (alt-text), source, truth (the
    scene as a JSON object, `Scene.to_dict`)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i, (scene, jitter) in enumerate(scene_rows(n, seed)):
        rel = f"images/{i:06d}.png"
        render(scene, size=size, rng=jitter).save(out / rel, format="PNG")
        rows.append(
            {
                "key": f"{i:06d}",
                "image_path": rel,
                "caption": alt_text(scene),
                "source": SOURCE,
                "truth": scene.to_dict(),
            }
        )
    manifest = out / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return manifest
