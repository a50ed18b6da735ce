"""Held-out scenes for evaluation, with long texts written from the truth.

The long text of a held-out scene is written by `truth_text` in a phrasing no captioner was
trained on (objects in reverse reading order, "The <cell> holds <object>.", the background
last), so retrieval with it measures what a model learned about the scene, not a captioner's
sentence pattern. The short text is the scene's alt-text, as in training.

`make_heldout_shards` writes such scenes as longcap shards (the long text as model "truth"),
ready for `longcap eval --shards` or `train_hooks.evaluate.evaluate_retrieval(models=["truth"])`.
"""

from __future__ import annotations

import json
from pathlib import Path

from toyworld.samples import make_scene_samples
from toyworld.scenes import Scene

TRUTH_MODEL = "truth"


def truth_text(scene: Scene) -> str:
    """'The bottom right holds a small blue square. The top left holds a large red circle. The
    background is grey.'"""
    objs = sorted(scene.objects, key=lambda o: (o.row, o.col), reverse=True)
    parts = [f"The {o.cell} holds {o.phrase()}." for o in objs]
    parts.append(f"The background is {scene.background}.")
    return " ".join(parts)


def make_heldout_shards(out_dir: str | Path, n: int = 200, seed: int = 1_000_003) -> Path:
    """Render `n` scenes (a seed no training set uses by default) and assemble them into
    longcap shards under out_dir/shards, each with its alt-text and its truth text; return the
    shards folder."""
    from shards.assemble import assemble

    out = Path(out_dir)
    manifest = make_scene_samples(out / "source", n=n, seed=seed)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        r["long_captions"] = {TRUTH_MODEL: truth_text(Scene.from_dict(r["truth"]))}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assemble(manifest, out / "shards")
    return out / "shards"
