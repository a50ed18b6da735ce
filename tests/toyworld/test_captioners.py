"""The tiny captioners: caption styles keep the clause contract the scorer reads, and training
(both stages) runs and saves a checkpoint that loads back."""

from __future__ import annotations

import random

import pytest

from toyworld.scenes import Obj, Scene, sample_scene
from toyworld.score import Mention, parse_caption
from toyworld.styles import STYLES, accuracy


@pytest.mark.parametrize("family", sorted(STYLES))
def test_styles_keep_the_clause_contract(family):
    """Every object once, in its own clause, with size, colour, shape and cell, in the style's
    order, and nothing else read as an object: the scorer gets the scene back exactly."""
    order = {"llava-1.5": lambda o: (o.row, o.col), "qwen2-vl": lambda o: (o.col, o.row)}[family]
    rng = random.Random(3)
    for _ in range(300):
        scene = sample_scene(rng)
        caption = STYLES[family](scene)
        parsed = parse_caption(caption)
        expected = [
            Mention(o.shape, o.color, o.size, o.cell) for o in sorted(scene.objects, key=order)
        ]
        assert parsed.mentions == expected, caption
        assert parsed.background == scene.background
        assert accuracy([scene], [caption]) == {
            "objects": len(scene.objects),
            "correct": 1.0,
            "hallucinated": 0.0,
        }


def test_styles_differ_and_order_as_documented():
    scene = Scene(
        "grey",
        (
            Obj("circle", "red", "large", 0, 2),
            Obj("bar", "blue", "small", 1, 0),
        ),
    )
    assert STYLES["llava-1.5"](scene) == (
        "The image shows a grey background. The top left is empty. The top center is empty. "
        "In the top right there is a large red circle. In the middle left there is a small blue "
        "bar. The center is empty. The middle right is empty. The bottom left is empty. The "
        "bottom center is empty. The bottom right is empty."
    )
    assert STYLES["qwen2-vl"](scene) == (
        "Shapes on a grey background. Left column: the top left is empty, the middle left has a "
        "small blue bar, the bottom left is empty. Center column: the top center is empty, the "
        "center is empty, the bottom center is empty. Right column: the top right has a large "
        "red circle, the middle right is empty, the bottom right is empty."
    )


def test_accuracy_counts_wrong_and_invented_objects():
    scene = Scene("white", (Obj("circle", "red", "large", 0, 0), Obj("bar", "blue", "small", 2, 2)))
    caption = (
        "A large red circle at top left, a small green bar at bottom right, a red square at center."
    )
    acc = accuracy([scene], [caption])
    assert acc["correct"] == 0.5
    assert acc["hallucinated"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("family", sorted(STYLES))
def test_training_runs_a_few_steps(family, tmp_path):
    pytest.importorskip("transformers")
    from toyworld.captioners import load, train

    small = {
        "llava-1.5": {
            "image_size": 48,
            "patch_size": 16,
            "text": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1},
            "vision": {"hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1},
        },
        "qwen2-vl": {
            "min_pixels": 5000,
            "max_pixels": 9000,
            "text": {"hidden_size": 128, "intermediate_size": 64, "num_hidden_layers": 1},
            "vision": {"depth": 1, "embed_dim": 32, "hidden_size": 128, "num_heads": 1},
        },
    }[family]
    res = train(
        family,
        tmp_path / family,
        steps=4,
        batch_size=4,
        log_every=1,
        check_n=2,
        spec=small,
        threads=1,
        vision_minutes=0.05,
    )
    vision = [e for e in res["log"] if e.get("stage") == "vision"]
    assert vision and all(0 <= e["cells_right"] <= 1 for e in vision)
    losses = [e["loss"] for e in res["log"] if "stage" not in e]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    assert res["config"]["steps_taken"] == 4
    assert set(res["heldout"]) >= {"correct", "hallucinated"}
    fam, model, processor = load(tmp_path / family)
    assert fam == family
    assert (tmp_path / family / "model.safetensors").exists()
    assert (tmp_path / family / "train_log.jsonl").read_text().count("\n") == 4 + len(vision)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(STYLES))
def test_committed_captioners_meet_the_bar(family):
    """The committed weights, on held-out scenes they never saw (rendered at the family's
    pipeline size, JPEG): >= 90% of objects right, <= 5% of mentions wrong. (The vLLM path is
    exercised by the toy experiment's test, through the whole pipeline.)"""
    pytest.importorskip("transformers")
    from toyworld.captioners import WEIGHTS, check_transformers, load

    fam, model, processor = load(WEIGHTS / family)
    assert fam == family
    res = check_transformers(family, model, processor, n=40, seed=7)
    assert res["objects"] > 100
    assert res["correct"] >= 0.9 and res["hallucinated"] <= 0.05, res["examples"]
