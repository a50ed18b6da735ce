"""Scenes: sampling, truth round trip, saliency, alt-text, rendering inside the cells."""

import random

import numpy as np

from toyworld.scenes import BACKGROUNDS, COLORS, Obj, Scene, alt_text, render, sample_scene


def test_sample_scene_distinct_cells_and_round_trip():
    rng = random.Random(0)
    for _ in range(200):
        s = sample_scene(rng)
        assert 2 <= len(s.objects) <= 6
        cells = [(o.row, o.col) for o in s.objects]
        assert len(set(cells)) == len(cells) and cells == sorted(cells)
        assert Scene.from_dict(s.to_dict()) == s


def test_alt_text_names_the_largest_object_first_in_reading_order():
    s = Scene(
        "grey",
        (
            Obj("circle", "red", "small", 0, 0),
            Obj("square", "blue", "large", 1, 2),
            Obj("bar", "green", "large", 2, 0),
        ),
    )
    assert alt_text(s) == "a large blue square"
    assert s.objects[1].cell == "middle right" and Obj("bar", "red", "small", 1, 1).cell == "center"


def test_render_draws_each_object_in_its_cell():
    s = Scene(
        "black", (Obj("square", "red", "large", 0, 0), Obj("circle", "yellow", "small", 2, 2))
    )
    img = np.asarray(render(s, 96, random.Random(1)))
    red, yellow = np.array(COLORS["red"]), np.array(COLORS["yellow"])
    bg = np.array(BACKGROUNDS["black"])
    assert (img[:32, :32] == red).all(-1).sum() > 200  # the top-left cell holds the red square
    assert (img[64:, 64:] == yellow).all(-1).sum() > 10
    assert not (img[32:64, 32:64] != bg).any()  # the empty center cell is background only
    assert (img == red).all(-1)[32:].sum() == 0  # nothing red outside the top row
