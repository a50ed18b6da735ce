"""LoTLIP's loss: one symmetric InfoNCE per text embedding against the image, then a weighted mean.

The objective is a class the training loop calls with the model's output dict, as open_clip's
loop calls `loss(**model_out)`: a new objective is a new class, not an edit of the loop. With
T long texts and S short texts the model returns S + T(1 + K) text embeddings per image, each one
more InfoNCE term, as LoTLIP's ClipLoss averages over its `number_text` texts
(wuw2019/LoTLIP open_clip/loss.py L197-L228, commit 301b906).

Under DDP the features of every rank are gathered with autograd-aware all_gather, so each rank
computes the loss over the global batch (the same number everywhere) and every feature receives
its full gradient; DDP's gradient averaging then yields exactly the single-process gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x over DDP ranks along dim -2 (the batch), keeping gradients."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=-2)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of normalised image [B, D] and text [B, D] embeddings."""
    logits = scale * image @ text.t()
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def lotlip_loss(
    image: torch.Tensor,
    texts: torch.Tensor,
    scale: torch.Tensor,
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted mean loss, per-text losses [T]) for image [B, D] and texts [T, B, D].

    Text 0 is the short caption's [CLS], 1 the long text's [CLS], 2.. its corners. weights
    default to equal; they are normalised to sum 1, so the result is a weighted mean.
    """
    image, texts = gather(image.float()), gather(texts.float())
    per = torch.stack([clip_loss(image, t, scale.float()) for t in texts])
    w = torch.ones_like(per) if weights is None else torch.tensor(weights, dtype=per.dtype)
    if w.numel() != per.numel():
        raise ValueError(f"{w.numel()} loss weights given for {per.numel()} text embeddings")
    w = w.to(per.device)
    return (per * w).sum() / w.sum(), per.detach()


class LoTLIPLoss(nn.Module):
    """The objective the trainer calls: `loss(**model_out)` -> {"loss", "losses"}.

    `weights` (one per text embedding: short [CLS]s, then each long text's [CLS] and corners)
    default to equal. Extra keys of the model output are ignored, so a model may return more.
    """

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.weights = list(weights) if weights is not None else None

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        **_: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        total, per = lotlip_loss(image_features, text_features, logit_scale, self.weights)
        return {"loss": total, "losses": per}
