"""timm ViT checkpoints, saved by timm itself, load into the image tower and give timm's own
outputs; bad checkpoints are refused with errors naming the file. Also the transformers-format
BERT / ViT folders' eps reaching each tower."""

from __future__ import annotations

import pytest
import torch

from train_hooks.model import build_model, preset
from train_hooks.weights import read_vision_weights

timm = pytest.importorskip("timm")


def _timm_vit(width=64, heads=2, depth=2, mlp_ratio=2.0, **kw):
    """A small timm ViT with the key layout of vit_base_patch16_224.augreg_in21k: class token,
    no pre-norm, no fc_norm, token pooling, fused qkv with bias, a classifier head."""
    torch.manual_seed(0)
    args = dict(
        img_size=32, patch_size=8, embed_dim=width, depth=depth, num_heads=heads,
        mlp_ratio=mlp_ratio,
    )  # fmt: skip
    m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, **args, **kw)
    # Random LayerNorm affine values, so a norm mapped to the wrong place shows.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
    return m.eval(), args


def _check_equal(model, m):
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(px)
        ours = model.vision(px)
        assert torch.allclose(ours, feats[:, 0], atol=1e-5)
        # What LoTLIP's TimmModel returns with timm_pool "token": forward_head(pre_logits).
        assert torch.allclose(ours, m.forward_head(feats, pre_logits=True), atol=1e-5)


def test_hf_hub_folder_saved_by_timm_safetensors_and_bin(tmp_path):
    from timm.models import save_for_hf

    m, args = _timm_vit()
    save_for_hf(m, tmp_path / "vit", model_args=args, safe_serialization="both")
    assert (tmp_path / "vit" / "model.safetensors").is_file()
    assert (tmp_path / "vit" / "pytorch_model.bin").is_file()
    model = build_model(preset("tiny", num_corner=0, vision_weights=str(tmp_path / "vit")))
    c = model.cfg
    assert (c.image_size, c.patch_size, c.vision_width, c.vision_layers) == (32, 8, 64, 2)
    assert (c.vision_heads, c.vision_mlp, c.vision_eps) == (2, 128, 1e-6)
    assert model.vision.ln_final.eps == 1e-6 and model.vision.layers[0].ln1.eps == 1e-6
    _check_equal(model.eval(), m)
    # The same folder with only timm's pytorch_model.bin.
    (tmp_path / "vit" / "model.safetensors").unlink()
    again = build_model(preset("tiny", num_corner=0, vision_weights=str(tmp_path / "vit")))
    _check_equal(again.eval(), m)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pth"])
def test_single_checkpoint_file(tmp_path, suffix):
    # Width 128 with 2 heads: no config.json and not the preset's width, so heads come from
    # timm's head dim of 64 (and a wrong head count would change the outputs).
    m, _ = _timm_vit(width=128, heads=2)
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(m.state_dict(), str(path))
    else:
        torch.save(m.state_dict(), path)
    model = build_model(preset("tiny", vision_weights=str(path))).eval()
    assert model.cfg.vision_width == 128 and model.cfg.vision_heads == 2
    _check_equal(model, m)


def test_heads_from_preset_when_width_matches(tmp_path):
    m, _ = _timm_vit(width=64, heads=4)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "ck.pth")  # a training checkpoint
    model = build_model(preset("tiny", vision_heads=4, vision_weights=str(tmp_path / "ck.pth")))
    _check_equal(model.eval(), m)


def test_trunk_of_a_whole_open_clip_checkpoint(tmp_path):
    """LoTLIP's own checkpoints (open_clip, saved from DDP): the image trunk under
    `module.visual.trunk.`, next to the text tower and the temperature."""
    m, _ = _timm_vit()
    state = {f"module.visual.trunk.{k}": v for k, v in m.state_dict().items()}
    state["module.text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(5, 4)
    state["module.logit_scale"] = torch.tensor(2.0)
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "epoch_1.pt")
    _check_equal(build_model(preset("tiny", vision_weights=str(tmp_path / "epoch_1.pt"))).eval(), m)


def test_lit_equals_lotlip_trunk(tmp_path):
    """Locked, no image projection: the un-normalised image embedding is exactly what LoTLIP's
    trunk returns (timm.create_model(num_classes=0, global_pool='token'))."""
    m, args = _timm_vit()
    torch.save(m.state_dict(), tmp_path / "vit.bin")
    trunk = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="token", **args
    )
    # As LoTLIP loads the in21k checkpoint (strict=False): only the classifier is left over.
    res = trunk.load_state_dict(m.state_dict(), strict=False)
    assert res.missing_keys == [] and res.unexpected_keys == ["head.weight", "head.bias"]
    cfg = preset("tiny", lock_image=True, vision_weights=str(tmp_path / "vit.bin"))
    model = build_model(cfg).train()
    assert model.image_proj is None and model.cfg.embed_dim == 64
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = trunk.eval()(px)
    z = model.encode_image(px, normalize=False)
    assert torch.allclose(z, ref, atol=1e-5) and not z.requires_grad


def _bad(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_key_is_an_error_naming_the_file(tmp_path):
    state = _timm_vit()[0].state_dict()
    del state["blocks.1.mlp.fc2.weight"]
    path = _bad(tmp_path, state)
    with pytest.raises(ValueError, match=r"bad\.pth.*missing.*layers\.1\.fc2\.weight"):
        build_model(preset("tiny", vision_weights=str(path)))


def test_wrong_shape_is_an_error_naming_the_file(tmp_path):
    state = _timm_vit()[0].state_dict()
    state["blocks.0.norm2.weight"] = torch.ones(65)
    path = _bad(tmp_path, state)
    with pytest.raises(ValueError, match=r"bad\.pth.*wrong shapes.*layers\.0\.ln2\.weight"):
        build_model(preset("tiny", vision_weights=str(path)))
    state = _timm_vit()[0].state_dict()
    state["blocks.0.attn.qkv.bias"] = torch.zeros(100)
    with pytest.raises(ValueError, match=r"bad\.pth.*blocks|bad\.pth.*qkv"):
        build_model(preset("tiny", vision_weights=str(_bad(tmp_path, state))))


@pytest.mark.parametrize(
    "state, match",
    [
        ({"conv1.weight": torch.zeros(8, 3, 7, 7)}, "not a ViT checkpoint"),
        ({"embeddings.word_embeddings.weight": torch.zeros(10, 4)}, "not a ViT checkpoint"),
        ("prenorm", "pre-norm"),
        ("layerscale", "LayerScale"),
        ("avgpool", "global-average-pool"),
    ],
)
def test_not_our_vit(tmp_path, state, match):
    if state == "prenorm":
        state = _timm_vit(pre_norm=True)[0].state_dict()
    elif state == "layerscale":
        state = _timm_vit(init_values=1e-5)[0].state_dict()
    elif state == "avgpool":
        state = _timm_vit(global_pool="avg")[0].state_dict()
    path = _bad(tmp_path, state)
    with pytest.raises(ValueError, match=rf"bad\.pth.*{match}"):
        read_vision_weights(path)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        read_vision_weights(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*model.safetensors"):
        read_vision_weights(tmp_path / "empty")
    (tmp_path / "w.npz").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"w\.npz.*numpy"):
        read_vision_weights(tmp_path / "w.npz")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.bin.*not a torch checkpoint"):
        read_vision_weights(tmp_path / "junk.bin")
