"""LoTLIP's model: a ViT image tower, a BERT text tower with K corner tokens, one temperature.

Token layout of a text: position 0 is [CLS], positions 1..K the corners, then the text. The
attention rule (`corner_attention_mask`) keeps [CLS] and the text blind to the corners and each
corner blind to [CLS] and to the other corners, so each corner gathers its own summary of the text
while the [CLS] embedding stays what a plain BERT would compute. Training uses the [CLS] of the
short caption and [CLS] + each corner of the long text; inference uses [CLS] only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from train_hooks.towers import ImageEncoder, TextEncoder, init_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ModelConfig:
    """Shapes of both towers. `text_weights` / `vision_weights`: local folders of pretrained
    weights (a downloaded bert-base-uncased, a ViT); their config.json overrides the shapes."""

    num_corner: int = 2
    embed_dim: int = 512
    vocab_size: int = 30522
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    max_positions: int = 512
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    eps: float = 1e-12
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    # BERT's 0.02 suits width 768; at width 64 it leaves a random [CLS] almost input-independent
    # (cosine ~0.9999 between texts), and a from-scratch run then sits at chance for long.
    init_std: float = 0.02
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    text_weights: str | None = None
    vision_weights: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["image_mean"], d["image_std"] = tuple(d["image_mean"]), tuple(d["image_std"])
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # CPU tests and the demo: two layers of width 64 per tower, 32-pixel images.
    "tiny": ModelConfig(
        embed_dim=64,
        text_width=64,
        text_layers=2,
        text_heads=2,
        text_mlp=128,
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        vision_mlp=128,
        init_std=0.125,
    ),
    # BERT-base + ViT-B/16 shapes (the defaults above).
    "base": ModelConfig(),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A copy of a preset with some fields replaced (e.g. num_corner, weight folders)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def corner_attention_mask(num_corner: int, padding_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, L] boolean, True where query (row) may attend to key (column).

    Layout: 0 = [CLS], 1..K = corners, K+1.. = text. [CLS] sees [CLS] and text; corner j sees
    itself and text; text sees [CLS] and text; nobody else sees a corner. Padding keys are never
    seen. Padding queries follow the text rule: their outputs are unused, and a row that is
    all False would make softmax return NaN.
    """
    b, n = padding_mask.shape
    k = num_corner
    if n < k + 1:
        raise ValueError(f"sequence of {n} tokens cannot hold [CLS] and {k} corners")
    dev = padding_mask.device
    pos = torch.arange(n, device=dev)
    is_corner = (pos >= 1) & (pos <= k)
    # Non-corner queries see every non-corner key; a corner query sees itself and the text.
    rule = ~is_corner[None, :] & ~is_corner[:, None]
    rule |= torch.eye(n, dtype=torch.bool, device=dev) & is_corner[:, None]
    corner_text = is_corner[:, None] & (pos[None, :] > k)
    rule |= corner_text
    return rule[None] & padding_mask[:, None, :].bool()


class LoTLIP(nn.Module):
    """Image and text towers with projections to a shared space and a learnable temperature."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(
            cfg.vocab_size,
            cfg.num_corner,
            cfg.text_width,
            cfg.text_layers,
            cfg.text_heads,
            cfg.text_mlp,
            cfg.max_positions,
            eps=cfg.eps,
        )
        self.vision = ImageEncoder(
            cfg.image_size,
            cfg.patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            cfg.vision_mlp,
            eps=cfg.eps,
        )
        init_weights(self, cfg.init_std)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_width**-0.5)
        nn.init.normal_(self.image_proj.weight, std=cfg.vision_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    @property
    def num_corner(self) -> int:
        return self.cfg.num_corner

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at max_logit_scale (100) as CLIP does."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.image_proj(self.vision(pixels))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(
        self,
        ids: torch.Tensor,
        padding_mask: torch.Tensor,
        with_corners: bool = False,
        normalize: bool = True,
    ) -> torch.Tensor:
        """[B, D] from [CLS]; with_corners: [1 + K, B, D] ([CLS] first, then each corner)."""
        # Drop all-padding columns: masked keys change nothing, so results are the same.
        n = max(int(padding_mask.sum(1).max()), self.num_corner + 1)
        ids, padding_mask = ids[:, :n], padding_mask[:, :n]
        hidden = self.text(ids, corner_attention_mask(self.num_corner, padding_mask))
        take = 1 + self.num_corner if with_corners else 1
        z = self.text_proj(self.text.pool(hidden[:, :take]))
        if normalize:
            z = F.normalize(z, dim=-1)
        return z.transpose(0, 1) if with_corners else z[:, 0]

    def forward(
        self,
        pixels: torch.Tensor,
        short_ids: torch.Tensor,
        short_mask: torch.Tensor,
        long_ids: torch.Tensor,
        long_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Features for the objective (train_hooks/loss.py), as open_clip's models return them.

        short_* are [S, B, L] (or [B, L] for S = 1): S short texts per image, each read from its
        [CLS]. long_* are [T, B, L] (or [B, L]): T long texts, each read from [CLS] and its K
        corners, as LoTLIP's encode_text does for its multi-text input. Returns
        {"image_features": [B, D], "text_features": [S + T(1 + K), B, D] (short [CLS]s, then per
        long text its [CLS] and corners), "logit_scale": scalar}; all features normalised.
        """
        if short_ids.dim() == 2:
            short_ids, short_mask = short_ids[None], short_mask[None]
        if long_ids.dim() == 2:
            long_ids, long_mask = long_ids[None], long_mask[None]
        s, b = short_ids.shape[:2]
        t = long_ids.shape[0]
        img = self.encode_image(pixels)
        short = self.encode_text(short_ids.flatten(0, 1), short_mask.flatten(0, 1))
        long = self.encode_text(long_ids.flatten(0, 1), long_mask.flatten(0, 1), with_corners=True)
        # [1 + K, T * B, D] -> [T * (1 + K), B, D]: each long text's [CLS] then its corners.
        long = long.unflatten(1, (t, b)).transpose(0, 1).flatten(0, 1)
        return {
            "image_features": img,
            "text_features": torch.cat([short.view(s, b, -1), long], dim=0),
            "logit_scale": self.scale(),
        }


def build_model(cfg: ModelConfig) -> LoTLIP:
    """A LoTLIP model, random or with the pretrained towers named in cfg (loaded from disk)."""
    from train_hooks.weights import apply_pretrained_shapes, load_pretrained

    cfg = apply_pretrained_shapes(cfg)
    model = LoTLIP(cfg)
    load_pretrained(model, cfg)
    return model
