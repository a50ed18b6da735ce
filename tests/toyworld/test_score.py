"""The caption scorer: parsing captions back into objects and scoring them against the truth."""

from __future__ import annotations

import random

from toyworld.scenes import Obj, Scene, sample_scene
from toyworld.score import Mention, parse_caption, score_caption, score_captions

SCENE = Scene(
    "grey",
    (
        Obj("circle", "red", "large", 0, 0),
        Obj("bar", "blue", "small", 1, 1),
        Obj("square", "green", "medium", 2, 2),
    ),
)


def _describe(scene: Scene, style: str) -> str:
    """A caption in one of the two contract styles, written from the truth."""
    n = len(scene.objects)
    if style == "sentences":
        parts = [f"The image shows {n} objects on a {scene.background} background."]
        parts += [f"In the {o.cell} there is {o.phrase()}." for o in scene.objects]
        return " ".join(parts)
    items = ", ".join(f"{o.phrase()} at {o.cell}" for o in scene.objects)
    return f"{n} shapes on a {scene.background} background: {items}."


def test_both_contract_styles_parse_to_the_truth():
    for style in ("sentences", "list"):
        parsed = parse_caption(_describe(SCENE, style))
        assert parsed.background == "grey"
        assert parsed.mentions == [Mention(o.shape, o.color, o.size, o.cell) for o in SCENE.objects]


def test_perfect_captions_of_random_scenes_score_full_marks():
    rng = random.Random(3)
    scenes = [sample_scene(rng) for _ in range(50)]
    triples = [(style, _describe(s, style), s) for s in scenes for style in ("sentences", "list")]
    for model, score in score_captions(triples).items():
        assert score.captions == 50, model
        assert score.correct == score.correct_with_size == score.truth_objects == score.mentions
        assert score.recall == 1.0 and score.hallucination_rate == 0.0
        assert score.background_right == 50


def test_lenient_forms_plurals_the_medium_sized_and_centre():
    text = (
        "Two red circles sit at the top left; a medium-sized blue bar is in the centre\n"
        "and a green square, medium, at the Bottom Right."
    )
    parsed = parse_caption(text)
    assert parsed.mentions[0] == Mention("circle", "red", None, "top left")
    assert parsed.mentions[1] == Mention("bar", "blue", "medium", "center")
    # "medium" after the shape closes nothing: the clause split at ',' leaves it alone.
    assert parsed.mentions[2] == Mention("square", "green", None, None)
    assert parsed.background is None


def test_hyphenated_cells_and_upper_lower():
    parsed = parse_caption("a large red circle in the upper-left; a small blue bar, lower right")
    assert parsed.mentions[0] == Mention("circle", "red", "large", "top left")
    assert parsed.mentions[1] == Mention("bar", "blue", "small", None)  # its cell is a clause on
    parsed = parse_caption("a small blue bar in the lower right")
    assert parsed.mentions == [Mention("bar", "blue", "small", "bottom right")]


def test_the_cell_may_come_before_or_after_and_middle_center_is_center():
    a = parse_caption("At middle center: a small red triangle.")
    b = parse_caption("at middle center a small red triangle")
    assert b.mentions == [Mention("triangle", "red", "small", "center")]
    # ':' splits clauses, so the cell of the first form is in another clause than the object.
    assert a.mentions == [Mention("triangle", "red", "small", None)]


def test_counts_correct_size_misplaced_hallucinated_and_background():
    text = (
        "3 shapes on a white background: a small red circle at top left, "  # right, wrong size
        "a small blue bar at top right, "  # exists, wrong cell: misplaced
        "a large yellow triangle at center, "  # no yellow triangle: hallucinated
        "a green square."  # exists, no cell: misplaced
    )
    s = score_caption(text, SCENE)
    assert (s.truth_objects, s.mentions, s.correct, s.correct_with_size) == (3, 4, 1, 0)
    assert (s.misplaced, s.hallucinated, s.background_right) == (2, 1, 0)
    assert s.recall == 1 / 3 and s.hallucination_rate == 1 / 4


def test_an_object_named_twice_counts_once_the_second_time_as_hallucinated():
    text = "A large red circle at top left. A large red circle at top left."
    s = score_caption(text, SCENE)
    assert (s.correct, s.misplaced, s.hallucinated) == (1, 0, 1)


def test_shapes_without_colour_and_empty_captions_are_no_mentions():
    s = score_caption("There is a circle and something square-ish.", SCENE)
    assert s.mentions == 0 and s.correct == 0 and s.hallucination_rate is None
    assert score_caption("", SCENE).recall == 0.0


def test_two_objects_in_one_clause_pair_with_their_cells_in_order():
    parsed = parse_caption("a red circle at top left and a blue bar at center")
    assert [m.cell for m in parsed.mentions] == ["top left", "center"]
    parsed = parse_caption("a red circle and a blue bar near top left or center or bottom left")
    assert [m.cell for m in parsed.mentions] == [None, None]


def test_aggregate_json_has_rates():
    scores = score_captions(
        [("m", _describe(SCENE, "list"), SCENE), ("m", "a purple bar at center.", SCENE)]
    )
    js = scores["m"].to_json()
    assert js["captions"] == 2 and js["truth_objects"] == 6 and js["correct"] == 3
    assert js["recall"] == 0.5 and js["hallucination_rate"] == 1 / 4
    assert js["background_accuracy"] == 0.5 and js["misplaced_rate"] == 0.0
