"""The objective class: called as `loss(**model_out)`, it is LoTLIP's weighted mean of one
InfoNCE per text embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train_hooks.loss import LoTLIPLoss, clip_loss


def _out(t: int = 3, b: int = 4, d: int = 8):
    torch.manual_seed(0)
    return {
        "image_features": F.normalize(torch.randn(b, d), dim=-1),
        "text_features": F.normalize(torch.randn(t, b, d), dim=-1),
        "logit_scale": torch.tensor(10.0),
        "extra": torch.zeros(1),  # ignored: a model may return more than the loss reads
    }


def test_loss_is_the_mean_of_per_text_infonce():
    out = _out()
    res = LoTLIPLoss()(**out)
    per = [clip_loss(out["image_features"], t, out["logit_scale"]) for t in out["text_features"]]
    assert torch.allclose(res["losses"], torch.stack(per))
    assert torch.allclose(res["loss"], torch.stack(per).mean())
    assert not res["losses"].requires_grad


def test_weights_and_their_count():
    out = _out()
    res = LoTLIPLoss([1.0, 0.0, 0.0])(**out)
    assert torch.allclose(res["loss"], res["losses"][0])
    with pytest.raises(ValueError, match="2 loss weights given for 3 text embeddings"):
        LoTLIPLoss([1.0, 1.0])(**out)
