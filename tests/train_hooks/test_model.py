"""The corner mask cell by cell, that it reaches attention, the tokenizer layout, and loading
transformers-format BERT / ViT folders into the compact towers."""

from __future__ import annotations

import pytest
import torch

from train_hooks.model import (
    LoTLIP,
    ModelConfig,
    build_model,
    corner_attention_mask,
    corner_block_mask,
    preset,
)
from train_hooks.tokenizer import CornerTokenizer


def expected(k: int, pad: list[bool], q: int, key: int) -> bool:
    """The rule written out per cell, independent of the implementation."""
    if not pad[key]:
        return False
    kind = lambda i: "cls" if i == 0 else "corner" if i <= k else "text"  # noqa: E731
    if kind(key) == "corner":
        return q == key  # only a corner sees itself
    if kind(q) == "corner":
        return kind(key) == "text"
    return True  # [CLS] / text / padding queries see [CLS] and text


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_mask_cell_by_cell(k):
    lengths = [k + 2, k + 5, k + 8]
    n = k + 8
    pad = torch.tensor([[i < ln for i in range(n)] for ln in lengths])
    mask = corner_attention_mask(k, pad)
    assert mask.shape == (3, n, n) and mask.dtype == torch.bool
    for b in range(3):
        for q in range(n):
            for key in range(n):
                assert bool(mask[b, q, key]) == expected(k, pad[b].tolist(), q, key), (b, q, key)
        assert mask[b].any(-1).all()  # no all-False row (softmax NaN)


def test_mask_named_cells():
    m = corner_attention_mask(2, torch.ones(1, 6, dtype=torch.bool))[0]
    cls, c0, c1, t = 0, 1, 2, 3
    assert m[cls, cls] and m[cls, t] and not m[cls, c0] and not m[cls, c1]
    assert m[c0, c0] and m[c0, t] and not m[c0, cls] and not m[c0, c1]
    assert m[c1, c1] and not m[c1, c0]
    assert m[t, cls] and m[t, t] and not m[t, c0]


def _tiny(k=2):
    torch.manual_seed(0)
    return LoTLIP(preset("tiny", num_corner=k)).eval()


def test_mask_reaches_attention():
    model = _tiny(2)
    tok = CornerTokenizer(None, 2, 32)
    ids, pad = tok([["a red circle on a grey background."]])
    mask = corner_attention_mask(2, pad)
    h0 = model.text(ids, mask)
    # Perturb [CLS]'s embedding only: corners never attend to [CLS], so after one layer they
    # must not change (deeper, [CLS] reaches them through the text tokens, as in LoTLIP).
    ids2 = ids.clone()
    ids2[0, 0] = tok.sep_id
    one = _tiny(2)
    one.text.layers = one.text.layers[:1]
    g0, g1 = one.text(ids, mask), one.text(ids2, mask)
    assert torch.allclose(g0[0, 1:3], g1[0, 1:3], atol=1e-6)
    assert not torch.allclose(g0[0, 0], g1[0, 0])
    assert not torch.allclose(g0[0, 3:], g1[0, 3:])  # text does see [CLS]
    # Perturb a corner: nothing but that corner changes.
    with torch.no_grad():
        model.text.corner_emb[0] += 1.0
    h2 = model.text(ids, mask)
    assert not torch.allclose(h0[0, 1], h2[0, 1])
    keep = [0, 2, *range(3, h0.shape[1])]
    assert torch.allclose(h0[0, keep], h2[0, keep], atol=1e-6)
    # And the same perturbation under a plain padding mask does leak: the mask is what blocks it.
    plain = pad[:, None, :].expand(-1, pad.shape[1], -1)
    assert not torch.allclose(model.text(ids, plain)[0, 0], h2[0, 0])


def test_cls_embedding_ignores_corners_and_padding():
    model = _tiny(2)
    tok = CornerTokenizer(None, 2, 40)
    ids, pad = tok([["one sentence."], ["one sentence.", "and a much longer second one here."]])
    z = model.encode_text(ids, pad)
    z_short = model.encode_text(ids[:1, :12], pad[:1, :12])  # less padding, same text
    assert torch.allclose(z[0], z_short[0], atol=1e-5)
    allz = model.encode_text(ids, pad, with_corners=True)
    assert allz.shape == (3, 2, model.cfg.embed_dim)
    assert torch.allclose(allz[0], z, atol=1e-6)


def test_forward_shapes_and_temperature():
    model = _tiny(3)
    tok = CornerTokenizer(None, 3, 48)
    ids, pad = tok([["a"], ["b c"]])
    out = model(torch.randn(2, 3, 32, 32), ids, pad, ids, pad)
    img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
    assert img.shape == (2, 64) and txt.shape == (1 + 3 + 1, 2, 64)
    # T = 2 long texts, S = 2 short texts: S + T (1 + K) embeddings, text by text.
    two = model(
        torch.randn(2, 3, 32, 32),
        ids.expand(2, -1, -1),
        pad.expand(2, -1, -1),
        torch.stack([ids, ids.flip(0)]),
        torch.stack([pad, pad.flip(0)]),
    )
    assert two["text_features"].shape == (2 + 2 * 4, 2, 64)
    assert torch.allclose(two["text_features"][2:6], txt[1:], atol=1e-5)
    assert torch.allclose(two["text_features"][6:], txt[1:].flip(1), atol=1e-5)
    assert abs(float(scale.detach()) - 1 / 0.07) < 1e-3
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert float(model.scale().detach()) == 100.0
    assert model.text.corner_emb.shape == (3, 64)


@pytest.mark.parametrize("length", [77, 128, 192, 248])
def test_tokenizer_layout(length):
    tok = CornerTokenizer(None, 2, length)
    ids, pad = tok([["first sentence.", "second one."], ["word " * 400]])
    assert ids.shape == (2, length)
    row = ids[0][pad[0]].tolist()
    assert row[:3] == [tok.cls_id, 30522, 30523]
    assert row.count(tok.sep_id) == 2 and row[-1] == tok.sep_id
    assert pad[1].all() and ids[1, -1] == tok.sep_id  # cut, still closed by [SEP]


def test_load_transformers_bert_and_vit(tmp_path):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        )
    ).eval()
    vit = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).eval()
    bert.save_pretrained(tmp_path / "bert")
    vit.save_pretrained(tmp_path / "vit")
    cfg = preset("tiny", num_corner=0, text_weights=str(tmp_path / "bert"))
    cfg.vision_weights = str(tmp_path / "vit")
    model = build_model(cfg).eval()
    assert model.cfg.text_width == 32 and model.cfg.max_positions == 256

    tok = CornerTokenizer(None, 0, 24)
    ids, pad = tok([["a cat sits."], ["two dogs run in the park today."]])
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=pad.long()).last_hidden_state
        ours = model.text(ids, corner_attention_mask(0, pad))
        assert torch.allclose(ref[pad], ours[pad], atol=1e-4)
        px = torch.randn(2, 3, 32, 32)
        ref_img = vit(pixel_values=px).last_hidden_state[:, 0]
        assert torch.allclose(ref_img, model.vision(px), atol=1e-4)
    # With corners the pretrained rows load and the K new rows stay new.
    cfg2 = preset("tiny", num_corner=2, text_weights=str(tmp_path / "bert"))
    m2 = build_model(cfg2)
    assert torch.equal(m2.text.word_emb.weight, bert.embeddings.word_embeddings.weight)
    assert m2.text.corner_emb.shape == (2, 32)


def test_bad_weight_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model(preset("tiny", text_weights=str(tmp_path)))


def test_lit_freezes_the_whole_trunk_and_drops_the_projection():
    torch.manual_seed(0)
    model = LoTLIP(preset("tiny", num_corner=2, lock_image=True))
    assert model.cfg.resolved_image_proj() == "none" and model.image_proj is None
    assert not any(k.startswith("image_proj") for k in model.state_dict())
    assert all(not p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("vision."))
    model.train()  # the trainer calls this every step: the locked trunk stays in eval mode
    assert model.training and model.text.training and not model.vision.training
    assert not any(m.training for m in model.vision.modules())
    tok = CornerTokenizer(None, 2, 32)
    ids, pad = tok([["a red circle."], ["two blue squares."]])
    out = model(torch.randn(2, 3, 32, 32), ids, pad, ids, pad)
    img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
    assert img.grad_fn is None  # computed under no_grad: nothing kept for backward
    (txt.sum() + (img[:, None] * txt.mean(0)[:, None]).sum() * scale).backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert model.text.corner_emb.grad is not None and model.logit_scale.grad is not None
    model.eval().train(False)
    assert not model.vision.training


def test_lit_with_linear_projection_and_auto():
    lin = LoTLIP(preset("tiny", lock_image=True, image_proj="linear"))
    assert lin.image_proj is not None and lin.image_proj.weight.requires_grad
    z = lin.encode_image(torch.randn(2, 3, 32, 32))
    assert z.requires_grad and z.shape == (2, 64)
    # auto: a projection whenever the trunk trains or the widths differ.
    assert preset("tiny").resolved_image_proj() == "linear"
    assert preset("tiny", lock_image=True, embed_dim=32).resolved_image_proj() == "linear"
    with pytest.raises(ValueError, match="image_proj 'none' needs vision_width"):
        preset("tiny", image_proj="none", embed_dim=32).resolved_image_proj()
    with pytest.raises(ValueError, match="image_proj 'mlp'"):
        preset("tiny", image_proj="mlp")


def test_base_preset_is_lotlips_config():
    """lotlip_bert-ViT-B-16.json: embed_dim 768, timm_proj none (frozen trunk, LiT)."""
    cfg = preset("base")
    assert cfg.embed_dim == 768 and cfg.lock_image and cfg.resolved_image_proj() == "none"
    assert (cfg.text_eps, cfg.vision_eps) == (1e-12, 1e-6)
    assert preset("base", lock_image=False).resolved_image_proj() == "linear"


def test_eps_per_tower_and_old_config_dicts():
    model = LoTLIP(preset("tiny", text_eps=1e-12, vision_eps=1e-6))
    assert model.text.emb_ln.eps == 1e-12 and model.text.layers[1].ln2.eps == 1e-12
    assert model.vision.ln_final.eps == 1e-6 and model.vision.layers[0].ln1.eps == 1e-6
    # A model_config saved before this change: one `eps` for both towers, no LiT fields, and
    # always an image projection. It loads, and the old state dict fits.
    old = preset("tiny").to_dict()
    for k in ("text_eps", "vision_eps", "lock_image", "image_proj", "text_attention"):
        del old[k]
    old["eps"] = 1e-12
    cfg = ModelConfig.from_dict(old)
    assert (cfg.text_eps, cfg.vision_eps, cfg.image_proj) == (1e-12, 1e-12, "linear")
    state = LoTLIP(preset("tiny", vision_eps=1e-12)).state_dict()
    LoTLIP(cfg).load_state_dict(state)
    assert ModelConfig.from_dict(preset("base").to_dict()) == preset("base")


@pytest.mark.parametrize("k", [0, 2])
def test_flex_block_mask_is_the_dense_rule(k):
    from torch.nn.attention.flex_attention import create_mask

    pad = torch.tensor([[i < n for i in range(k + 9)] for n in (k + 9, k + 4, k + 1)])
    bm = corner_block_mask(k, pad)
    dense = create_mask(bm.mask_mod, 3, 1, k + 9, k + 9)[:, 0]
    assert torch.equal(dense, corner_attention_mask(k, pad))


@pytest.mark.parametrize("k", [0, 2])
def test_flex_attention_equals_dense(k):
    """The text tower under the block mask (FlexAttention, eager on CPU) gives the dense path's
    hidden states on every real token. Gradients cannot be compared here: torch 2.13 has no
    FlexAttention backward on CPU, which is also why `text_attention="flex"` runs the dense
    path off CUDA."""
    model = _tiny(k)
    tok = CornerTokenizer(None, k, 40)
    ids, pad = tok([["one."], ["a longer text with some words.", "and a second one here."]])
    with torch.no_grad():
        dense = model.text(ids, corner_attention_mask(k, pad))
        flex = model.text(ids, corner_block_mask(k, pad))
    assert torch.allclose(dense[pad], flex[pad], atol=1e-5)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        model.text(ids, corner_block_mask(k, pad))
    # Selected by the config: on CPU it falls back to the dense path, gradients and all.
    fb = LoTLIP(preset("tiny", num_corner=k, text_attention="flex"))
    fb.load_state_dict(model.state_dict())
    z = fb.encode_text(ids, pad, with_corners=True)
    assert torch.allclose(z, model.encode_text(ids, pad, with_corners=True), atol=1e-6)
    z.sum().backward()


def test_lit_without_pretrained_trunk_warns():
    with pytest.warns(UserWarning, match="frozen at its random initialisation"):
        build_model(preset("tiny", lock_image=True))
