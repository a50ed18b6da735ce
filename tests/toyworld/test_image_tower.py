"""The toy image tower: pretraining runs, and the saved tower reads back through the trainer's
own timm reader with identical outputs (so `longcap train --vision-weights` gets what was
trained)."""

from __future__ import annotations

import json

import torch

from toyworld import image_tower
from train_hooks.model import build_model, preset

SMALL = {"image_size": 24, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "mlp": 64}


def test_pretraining_saves_a_timm_tower_that_loads_back(tmp_path):
    res = image_tower.train(
        tmp_path / "tower",
        minutes=0.03,
        batch_size=4,
        threads=1,
        log_every=1,
        spec=SMALL,
        check_n=8,
    )
    assert res["config"]["steps_taken"] >= 1
    assert set(res["heldout"]) == {"scenes", "cells_right", "scenes_right", "background_right"}
    cfg = json.loads((tmp_path / "tower" / "config.json").read_text())
    assert cfg["model_args"]["num_heads"] == 2
    enc = res["encoder"].eval()
    again = image_tower.load(tmp_path / "tower")
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(enc(x), again(x))
    # The trainer's model takes it as its locked image trunk, shapes from the checkpoint.
    model = build_model(
        preset("tiny", vision_weights=str(tmp_path / "tower"), lock_image=True)
    ).eval()
    assert model.cfg.image_size == 24 and model.cfg.vision_width == 32
    with torch.no_grad():
        assert torch.allclose(model.vision(x), enc(x))


def test_timm_names_are_the_inverse_of_the_reader():
    from train_hooks.weights import _PREFIXES, _TIMM_IGNORED, _TIMM_VIT, _split_qkv, rename

    enc = image_tower.build(SMALL)
    state = image_tower.timm_state(enc)
    assert "blocks.0.attn.qkv.weight" in state and "patch_embed.proj.weight" in state
    renamed, unknown = rename(state, _TIMM_VIT, _PREFIXES, _TIMM_IGNORED)
    assert not unknown
    back = _split_qkv(renamed, "x")
    ours = enc.state_dict()
    assert set(back) == set(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
