"""LoTLIP's model: a ViT image tower, a BERT text tower with K corner tokens, one temperature.

Token layout of a text: position 0 is [CLS], positions 1..K the corners, then the text. The
attention rule (`corner_rule`) keeps [CLS] and the text blind to the corners and each corner
blind to [CLS] and to the other corners, so each corner gathers its own summary of the text
while the [CLS] embedding stays what a plain BERT would compute. Training uses the [CLS] of the
short caption and [CLS] + each corner of the long text; inference uses [CLS] only.

LiT (`ModelConfig.lock_image`): the whole ViT trunk is frozen, kept in eval mode and run under
no_grad; with `image_proj` "none" the image embedding is the trunk's normed [CLS] itself, as in
LoTLIP's `lotlip_bert-ViT-B-16` config (`timm_proj: none`, embed dim 768). docs/MODEL.md cites
LoTLIP's files for each choice.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from train_hooks.towers import ImageEncoder, TextEncoder, init_weights
from train_hooks.weights import load_tower, read_text_weights, read_vision_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


IMAGE_PROJ = ("auto", "linear", "none")
TEXT_ATTENTION = ("dense", "flex")


@dataclass
class ModelConfig:
    """Shapes of both towers and how they train.

    `text_weights`: a bert-base-uncased folder saved by transformers. `vision_weights`: a ViT
    saved by transformers (folder) or by timm (.safetensors / .bin / .pth file or a folder with
    one); the checkpoint's shapes override those here. `text_eps` / `vision_eps`: LayerNorm eps
    of each tower (BERT 1e-12, timm ViT 1e-6). `lock_image`: LiT, the ViT trunk frozen.
    `image_proj`: "linear" (a learned [vision_width, embed_dim] map), "none" (the trunk's
    feature is the embedding; needs vision_width == embed_dim) or "auto" (none when lock_image
    and the widths agree, else linear). `text_attention`: "dense" ([B, L, L] boolean mask into
    SDPA) or "flex" (FlexAttention block mask, compiled; on CUDA only, dense elsewhere).
    """

    num_corner: int = 2
    embed_dim: int = 768
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
    text_eps: float = 1e-12
    vision_eps: float = 1e-6
    lock_image: bool = False
    image_proj: str = "auto"
    text_attention: str = "dense"
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

    def __post_init__(self) -> None:
        if self.image_proj not in IMAGE_PROJ:
            raise ValueError(f"image_proj {self.image_proj!r}: choose one of {IMAGE_PROJ}")
        if self.text_attention not in TEXT_ATTENTION:
            raise ValueError(
                f"text_attention {self.text_attention!r}: choose one of {TEXT_ATTENTION}"
            )

    def resolved_image_proj(self) -> str:
        """The image projection to build, "linear" or "none". "auto" is none when the trunk is
        locked and already embed_dim wide: LoTLIP's `timm_proj: none`, ViT-B/16 width 768 =
        embed dim 768."""
        if self.image_proj == "auto":
            locked_fits = self.lock_image and self.vision_width == self.embed_dim
            return "none" if locked_fits else "linear"
        if self.image_proj == "none" and self.vision_width != self.embed_dim:
            raise ValueError(
                f"image_proj 'none' needs vision_width ({self.vision_width}) == embed_dim "
                f"({self.embed_dim}); use 'linear' or set embed_dim"
            )
        return self.image_proj

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Also reads configs saved before the towers had separate eps (one `eps`, used by both
        towers then) and before LiT was a model setting (always an image projection)."""
        d = dict(d)
        d["image_mean"], d["image_std"] = tuple(d["image_mean"]), tuple(d["image_std"])
        if "eps" in d:
            eps = d.pop("eps")
            d.setdefault("text_eps", eps)
            d.setdefault("vision_eps", eps)
        d.setdefault("image_proj", "linear")
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
    # BERT-base + ViT-B/16 shapes (the defaults above), as LoTLIP's lotlip_bert-ViT-B-16 config:
    # embed dim 768, frozen timm ViT trunk without an image projection (LiT), linear text proj.
    "base": ModelConfig(lock_image=True),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A copy of a preset with some fields replaced (e.g. num_corner, weight folders)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def corner_rule(q: torch.Tensor, kv: torch.Tensor, num_corner: int) -> torch.Tensor:
    """True where query position q may attend to key position kv (padding aside); elementwise
    over broadcastable index tensors, so the dense mask and FlexAttention's mask_mod share it.

    Layout: 0 = [CLS], 1..K = corners, K+1.. = text. [CLS] sees [CLS] and text; corner j sees
    itself and text; text sees [CLS] and text; nobody else sees a corner. Padding queries
    follow the text rule: their outputs are unused, and a row that is all False would make
    softmax return NaN.
    """
    q_corner = (q >= 1) & (q <= num_corner)
    kv_corner = (kv >= 1) & (kv <= num_corner)
    return torch.where(q_corner, (q == kv) | (kv > num_corner), ~kv_corner)


def _check_length(num_corner: int, n: int) -> None:
    if n < num_corner + 1:
        raise ValueError(f"sequence of {n} tokens cannot hold [CLS] and {num_corner} corners")


def corner_attention_mask(num_corner: int, padding_mask: torch.Tensor) -> torch.Tensor:
    """[B, L, L] boolean, True where query (row) may attend to key (column): `corner_rule`,
    and padding keys are never seen."""
    b, n = padding_mask.shape
    _check_length(num_corner, n)
    pos = torch.arange(n, device=padding_mask.device)
    return (
        corner_rule(pos[:, None], pos[None, :], num_corner)[None] & padding_mask[:, None, :].bool()
    )


def corner_block_mask(num_corner: int, padding_mask: torch.Tensor):
    """The same rule as `corner_attention_mask`, as FlexAttention's `BlockMask`: blocks of
    128 x 128 that are all padding are skipped, the others evaluate the rule, and the fused
    kernel never needs a [B, L, L] tensor (a dense mask keeps SDPA off its flash kernel)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, n = padding_mask.shape
    _check_length(num_corner, n)
    pad = padding_mask.bool()

    def mask_mod(bi, h, q, kv):
        return corner_rule(q, kv, num_corner) & pad[bi, kv]

    return create_block_mask(mask_mod, b, None, n, n, device=pad.device)


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
            eps=cfg.text_eps,
        )
        self.vision = ImageEncoder(
            cfg.image_size,
            cfg.patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            cfg.vision_mlp,
            eps=cfg.vision_eps,
        )
        init_weights(self, cfg.init_std)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_width**-0.5)
        # No image projection at all under "none" (no parameter, nothing in the state dict).
        self.image_proj: nn.Linear | None = None
        if cfg.resolved_image_proj() == "linear":
            self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
            nn.init.normal_(self.image_proj.weight, std=cfg.vision_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        if cfg.lock_image:
            # LiT: every trunk parameter frozen (patch embedding, class token, positions, all
            # blocks, final norm), as LoTLIP's TimmModel.lock() freezes `self.trunk`.
            self.vision.requires_grad_(False)
            self.vision.eval()

    def train(self, mode: bool = True) -> LoTLIP:
        """As nn.Module.train, but a locked trunk stays in eval mode (the trainer calls
        model.train() every step; a frozen tower should not run its train-time behaviour)."""
        super().train(mode)
        if self.cfg.lock_image:
            self.vision.eval()
        return self

    @property
    def num_corner(self) -> int:
        return self.cfg.num_corner

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at max_logit_scale (100) as CLIP does."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B, D]: the trunk's normed [CLS] through the image projection (if any). A locked
        trunk runs under no_grad: no activations are kept for a backward that cannot reach it."""
        if self.cfg.lock_image:
            with torch.no_grad():
                z = self.vision(pixels)
        else:
            z = self.vision(pixels)
        if self.image_proj is not None:
            z = self.image_proj(z)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(
        self,
        ids: torch.Tensor,
        padding_mask: torch.Tensor,
        with_corners: bool = False,
        normalize: bool = True,
    ) -> torch.Tensor:
        """[B, D] from [CLS]; with_corners: [1 + K, B, D] ([CLS] first, then each corner)."""
        if self.cfg.text_attention == "flex" and ids.is_cuda:
            # Full length: static shapes keep the compiled kernel from recompiling per batch;
            # the block mask skips the all-padding blocks anyway. Off CUDA the dense path runs
            # (same outputs; FlexAttention has no CPU backward in torch 2.13).
            mask = corner_block_mask(self.num_corner, padding_mask)
        else:
            # Drop all-padding columns: masked keys change nothing, so results are the same.
            n = max(int(padding_mask.sum(1).max()), self.num_corner + 1)
            ids, padding_mask = ids[:, :n], padding_mask[:, :n]
            mask = corner_attention_mask(self.num_corner, padding_mask)
        hidden = self.text(ids, mask)
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
        corners, as LoTLIP's encode_text does for its multi-text input; T may be 0 (short
        texts only). Returns
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
        short = self.encode_text(short_ids.flatten(0, 1), short_mask.flatten(0, 1)).view(s, b, -1)
        feats = [short]
        if t:  # T = 0: short texts only
            long = self.encode_text(
                long_ids.flatten(0, 1), long_mask.flatten(0, 1), with_corners=True
            )
            # [1 + K, T * B, D] -> [T * (1 + K), B, D]: each long text's [CLS] then its corners.
            feats.append(long.unflatten(1, (t, b)).transpose(0, 1).flatten(0, 1))
        return {
            "image_features": img,
            "text_features": torch.cat(feats, dim=0),
            "logit_scale": self.scale(),
        }


def build_model(cfg: ModelConfig) -> LoTLIP:
    """A LoTLIP model, random or with the pretrained towers named in cfg (read from disk once;
    their shapes and eps replace cfg's)."""
    text = read_text_weights(cfg.text_weights) if cfg.text_weights else None
    vision = None
    if cfg.vision_weights:
        vision = read_vision_weights(cfg.vision_weights, cfg.vision_heads, cfg.vision_width)
    for w in (text, vision):
        if w is not None:
            cfg = replace(cfg, **w.shapes)
    model = LoTLIP(cfg)
    if text is not None:
        load_tower(model.text, text)
    if vision is not None:
        load_tower(model.vision, vision)
    elif cfg.lock_image:
        warnings.warn(
            "lock_image with no vision_weights: the image trunk stays frozen at its random "
            "initialisation; give a pretrained ViT (e.g. timm's vit_base_patch16_224."
            "augreg_in21k) or turn lock_image off",
            stacklevel=2,
        )
    return model
