"""Held-out scenes: truth texts that the scorer reads back exactly, assembled as longcap shards."""

import json
import random

import pyarrow.parquet as pq

from toyworld.heldout import TRUTH_MODEL, make_heldout_shards, truth_text
from toyworld.scenes import Scene, alt_text, sample_scene
from toyworld.score import score_caption


def test_truth_text_names_every_object_exactly():
    rng = random.Random(5)
    for _ in range(300):
        scene = sample_scene(rng)
        s = score_caption(truth_text(scene), scene)
        assert (s.correct, s.correct_with_size, s.hallucinated) == (len(scene.objects),) * 2 + (0,)
        assert s.background_right == 1


def test_heldout_shards_carry_alt_text_truth_and_the_truth_text(tmp_path):
    shards = make_heldout_shards(tmp_path, n=6, seed=11)
    rows = [r for p in sorted(shards.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        scene = Scene.from_dict(json.loads(r["truth"]))
        assert r["caption"] == alt_text(scene)
        (lc,) = r["long_captions"]
        assert lc["model"] == TRUTH_MODEL and lc["text"] == truth_text(scene)
        assert len(lc["subcaptions"]) == len(scene.objects) + 1  # one sentence each + background
