"""The two towers, compact: a BERT-shaped text encoder and a ViT image encoder.

Written out (rather than taken from transformers) so that the corner mask goes straight into
attention with nothing in between that could broadcast or drop it, and so the whole model reads
in one sitting. The mask is either a dense [B, L, L] boolean (PyTorch's SDPA) or a FlexAttention
`BlockMask` (see `model.corner_block_mask`). Parameter layouts match BERT and ViT one to one, so
`weights.py` loads a bert-base-uncased, a transformers ViT or a timm ViT by renaming keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

_compiled_flex = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask) -> torch.Tensor:
    """FlexAttention: compiled on CUDA (the fused kernel is the point of it); eager elsewhere,
    where it is an unfused reference that materialises the scores (used to check equality on
    CPU: compiling it there takes ~30 s on a 2-core machine)."""
    global _compiled_flex
    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=mask)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v (as BERT and ViT store them)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | BlockMask | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if isinstance(mask, BlockMask):
            out = _flex(q, k, v, mask)
        else:
            # mask [B, L, L] -> [B, 1, L, L]: the same rule for every head; True = may attend.
            out = F.scaled_dot_product_attention(q, k, v, None if mask is None else mask[:, None])
        return self.o(out.transpose(1, 2).reshape(b, n, d))


class BertLayer(nn.Module):
    """Post-norm transformer layer, as in BERT."""

    def __init__(self, width: int, heads: int, mlp: int, eps: float) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.fc1, self.fc2 = nn.Linear(width, mlp), nn.Linear(mlp, width)
        self.ln2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | BlockMask) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class TextEncoder(nn.Module):
    """BERT with K corner embeddings: ids >= vocab_size are corners, looked up in their own table
    so a pretrained 30,522-row table loads unchanged."""

    def __init__(
        self,
        vocab_size: int,
        num_corner: int,
        width: int,
        layers: int,
        heads: int,
        mlp: int,
        max_positions: int = 512,
        type_vocab: int = 2,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.vocab_size, self.num_corner = vocab_size, num_corner
        self.word_emb = nn.Embedding(vocab_size, width)
        # Each corner row drawn independently, normal std 0.02 (LoTLIP's initialisation).
        self.corner_emb = nn.Parameter(torch.randn(num_corner, width) * 0.02)
        self.pos_emb = nn.Embedding(max_positions, width)
        self.type_emb = nn.Embedding(type_vocab, width)
        self.emb_ln = nn.LayerNorm(width, eps=eps)
        self.layers = nn.ModuleList(BertLayer(width, heads, mlp, eps) for _ in range(layers))
        self.pooler = nn.Linear(width, width)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        is_corner = ids >= self.vocab_size
        x = self.word_emb(ids.masked_fill(is_corner, 0))
        if self.num_corner:
            corner = self.corner_emb[(ids - self.vocab_size).clamp(0, self.num_corner - 1)]
            x = torch.where(is_corner[..., None], corner.to(x.dtype), x)
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.emb_ln(x + self.pos_emb(pos)[None] + self.type_emb.weight[0])

    def forward(self, ids: torch.Tensor, attn_mask: torch.Tensor | BlockMask) -> torch.Tensor:
        """Hidden states [B, L, D] for ids [B, L] under a boolean [B, L, L] mask or a BlockMask."""
        if ids.shape[1] > self.pos_emb.num_embeddings:
            raise ValueError(
                f"context length {ids.shape[1]} exceeds the text tower's "
                f"{self.pos_emb.num_embeddings} positions"
            )
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler (dense + tanh), applied to whichever positions are given."""
        return torch.tanh(self.pooler(hidden))


class VitLayer(nn.Module):
    """Pre-norm transformer layer, as in ViT (timm's `Block` without LayerScale or qk-norm)."""

    def __init__(self, width: int, heads: int, mlp: int, eps: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.fc1, self.fc2 = nn.Linear(width, mlp), nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ImageEncoder(nn.Module):
    """ViT: patch embedding, [CLS] token, learned positions; the output is the normed [CLS].

    This is timm's `VisionTransformer` with class token, no pre-norm, no fc_norm and
    `global_pool='token'` (vit_base_patch16_224.augreg_in21k): `forward` equals timm's
    `forward_head(forward_features(x), pre_logits=True)`, i.e. `forward_features(x)[:, 0]`,
    which is what LoTLIP's `TimmModel` returns with `timm_pool: token`, `timm_proj: none`
    (docs/MODEL.md). timm's LayerNorm eps is 1e-6; transformers' ViTConfig default is 1e-12.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp: int,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch {patch_size}")
        n = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        self.layers = nn.ModuleList(VitLayer(width, heads, mlp, eps) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=eps)

    def hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_emb.to(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.ln_final(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.hidden(pixels)[:, 0]


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: normal(std) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
