"""Reading pretrained towers from local files: a bert-base-uncased folder as transformers saves it,
and a ViT either as transformers saves it (config.json + weights) or as timm saves it (a
.safetensors / .bin / .pth file, or a folder holding one, e.g. the hf-hub layout of
`timm/vit_base_patch16_224.augreg_in21k`). Nothing is downloaded.

This module knows file formats and key names only: it returns `TowerWeights` (tensors already in
the names of `towers.py`, plus the `ModelConfig` fields they imply) and loads them into a plain
`nn.Module`. It never imports `model.py`, so `model.build_model` can import it at module level.

A missing, misshapen or unknown tower weight is an error naming the file, never a silent random
init; the corner rows of the text tower stay new (normal, std 0.02).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

_BERT = [
    (r"embeddings\.word_embeddings\.", "word_emb."),
    (r"embeddings\.position_embeddings\.", "pos_emb."),
    (r"embeddings\.token_type_embeddings\.", "type_emb."),
    (r"embeddings\.LayerNorm\.", "emb_ln."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.attn.q."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.attn.k."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.attn.v."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.o."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.ln1."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ln2."),
    (r"pooler\.dense\.", "pooler."),
]
# Heads of a masked-LM / NSP checkpoint (bert-base-uncased ships them): not part of the tower.
_BERT_IGNORED = (r"cls\.", r"embeddings\.position_ids$")

_HF_VIT = [
    (r"embeddings\.cls_token$", "cls_token"),
    (r"embeddings\.position_embeddings$", "pos_emb"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"layers.\1.ln1."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attn.q."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attn.k."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attn.v."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.o."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"layers.\1.ln2."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"layernorm\.", "ln_final."),
]
_HF_VIT_IGNORED = (r"pooler\.", r"classifier\.")

# timm's VisionTransformer (timm/models/vision_transformer.py). `blocks.N.attn.qkv` is fused and
# split in `_split_qkv`. `norm` is the final LayerNorm applied before token pooling.
_TIMM_VIT = [
    (r"cls_token$", "cls_token"),
    (r"pos_embed$", "pos_emb"),
    (r"patch_embed\.proj\.", "patch."),
    (r"blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"layers.\1.attn.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.o."),
    (r"blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.fc1."),
    (r"blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.fc2."),
    (r"norm\.", "ln_final."),
]
# The classifier is not part of the trunk: LoTLIP builds the trunk with num_classes=0
# (timm_model.py:126-133 at 301b906) and loads the in21k checkpoint with strict=False.
_TIMM_IGNORED = (r"head\.",)
# Keys of ViT variants our tower does not implement; named in the error.
_TIMM_UNSUPPORTED = {
    "norm_pre.": "a pre-norm (CLIP-style) ViT",
    "fc_norm.": "a global-average-pool ViT (fc_norm instead of norm)",
    "reg_token": "a ViT with register tokens",
    "dist_token": "a distilled DeiT (two class tokens)",
    ".ls1.": "a ViT with LayerScale",
    ".q_norm.": "a ViT with qk-norm",
    "attn_pool.": "a ViT with attention pooling",
}
# Heads per width for timm's ViT sizes (all have head dim 64 except huge/giant). Used when the
# checkpoint's config.json names an architecture and gives no num_heads.
_TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16}
_TIMM_EPS = 1e-6  # timm's VisionTransformer: norm_layer = partial(nn.LayerNorm, eps=1e-6)
_PREFIXES = ("visual.trunk.", "trunk.", "model.")


@dataclass
class TowerWeights:
    """Tensors for one tower, in the names of `towers.py`, and the `ModelConfig` fields they
    set. `source` is the file or folder, for error messages; `new` lists our parameters that
    the checkpoint does not have on purpose (the corner rows)."""

    source: str
    kind: str  # "bert", "hf-vit" or "timm-vit"
    state: dict[str, torch.Tensor]
    shapes: dict[str, Any]
    new: tuple[str, ...] = field(default_factory=tuple)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; give a folder saved by transformers")
    return json.loads(path.read_text())


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint file; training checkpoints nesting them under 'state_dict' or
    'model' (timm's and open_clip's layouts) are unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".npz", ".npy"):
        raise ValueError(
            f"{path}: numpy (big_vision) checkpoints are not read; use timm's .safetensors or "
            "pytorch_model.bin of the same model (e.g. from the hf-hub repo timm/<model>)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle of arbitrary objects, or not a torch file at all
        raise ValueError(f"{path}: not a torch checkpoint of plain tensors ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return obj


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, or of the first of model.safetensors,
    pytorch_model.bin, open_clip_pytorch_model.bin in a folder."""
    path = Path(path)
    if path.is_file():
        return _load_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            return _load_file(path / name)
    raise FileNotFoundError(f"{path}: none of {', '.join(_WEIGHT_FILES)}")


def rename(
    state: dict[str, torch.Tensor],
    rules: list[tuple[str, str]],
    prefixes: tuple[str, ...],
    ignored: tuple[str, ...] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map checkpoint names to ours; returns (renamed, names that matched no rule and are not
    in `ignored`)."""
    out, unknown = {}, []
    for name, t in state.items():
        for p in prefixes:
            if name.startswith(p):
                name = name[len(p) :]
                break
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        for pat, rep in rules:
            new, hit = re.subn("^" + pat, rep, name)
            if hit:
                out[new] = t
                break
        else:
            if not any(re.match(p, name) for p in ignored):
                unknown.append(name)
    return out, unknown


def read_text_weights(folder: str | Path) -> TowerWeights:
    """A bert-base-uncased-shaped folder saved by transformers."""
    folder = Path(folder)
    c = _read_config(folder)
    state, unknown = rename(read_state_dict(folder), _BERT, ("bert.",), _BERT_IGNORED)
    if unknown:
        raise ValueError(f"{folder}: keys that are not a BERT tower: {unknown[:5]}")
    shapes = {
        "vocab_size": c["vocab_size"],
        "text_width": c["hidden_size"],
        "text_layers": c["num_hidden_layers"],
        "text_heads": c["num_attention_heads"],
        "text_mlp": c["intermediate_size"],
        "max_positions": c.get("max_position_embeddings", 512),
        "text_eps": c.get("layer_norm_eps", 1e-12),
    }
    return TowerWeights(str(folder), "bert", state, shapes, new=("corner_emb",))


def _is_timm(state: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith("patch_embed.proj.weight") for k in state)


def _is_hf_vit(state: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def read_vision_weights(path: str | Path, heads: int | None = None, width: int | None = None):
    """A ViT from a transformers folder or a timm checkpoint (file or folder), told apart by its
    key names. `heads`/`width`: the configured tower's, used for a timm checkpoint without a
    config.json when its width is the same (heads are not stored in the tensors)."""
    path = Path(path)
    state = read_state_dict(path)
    if _is_hf_vit(state):
        return _hf_vit(path, state)
    if _is_timm(state):
        return _timm_vit(path, state, heads, width)
    raise ValueError(
        f"{path}: not a ViT checkpoint: no timm 'patch_embed.proj.weight' nor transformers "
        f"'embeddings.patch_embeddings.projection.weight' key (first keys: {list(state)[:5]})"
    )


def _hf_vit(path: Path, state: dict[str, torch.Tensor]) -> TowerWeights:
    if not path.is_dir():
        raise ValueError(f"{path}: a transformers ViT is read from its folder (with config.json)")
    c = _read_config(path)
    renamed, unknown = rename(state, _HF_VIT, ("vit.",), _HF_VIT_IGNORED)
    if unknown:
        raise ValueError(f"{path}: keys that are not a ViT tower: {unknown[:5]}")
    shapes: dict[str, Any] = {
        "image_size": c["image_size"],
        "patch_size": c["patch_size"],
        "vision_width": c["hidden_size"],
        "vision_layers": c["num_hidden_layers"],
        "vision_heads": c["num_attention_heads"],
        "vision_mlp": c["intermediate_size"],
        "vision_eps": c.get("layer_norm_eps", 1e-12),  # transformers' ViTConfig default
    }
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        for ours, theirs in (("image_mean", "image_mean"), ("image_std", "image_std")):
            if theirs in p:
                shapes[ours] = tuple(p[theirs])
    return TowerWeights(str(path), "hf-vit", renamed, shapes)


def _timm_heads(path: Path, width: int, heads: int | None, cfg_width: int | None) -> int:
    """Heads are not in the tensors: take them from config.json (hf-hub timm layout: model_args
    or the architecture name), else the configured tower's when the width matches, else
    timm's head dim of 64."""
    folder = path if path.is_dir() else path.parent
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        c = json.loads(cfg_file.read_text())
        n = (c.get("model_args") or {}).get("num_heads")
        if n:
            return int(n)
        m = re.match(r"vit_([a-z]+)_", c.get("architecture", ""))
        if m and m.group(1) in _TIMM_HEADS:
            return _TIMM_HEADS[m.group(1)]
    if heads and width == cfg_width and width % heads == 0:
        return heads
    if width % 64:
        raise ValueError(
            f"{path}: cannot tell the number of heads of a width-{width} ViT; put timm's "
            "config.json (with 'architecture' or model_args.num_heads) next to the weights"
        )
    return width // 64


def _split_qkv(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """timm fuses q, k and v as rows [q; k; v] of one [3D, D] linear (timm's Attention reshapes
    its output to (B, N, 3, heads, head_dim)); ours keeps three."""
    out = {}
    for name, t in state.items():
        m = re.match(r"(layers\.\d+\.attn\.)qkv\.(weight|bias)$", name)
        if not m:
            out[name] = t
            continue
        if t.shape[0] % 3:
            raise ValueError(f"{path}: {name} has {t.shape[0]} rows, not 3 x width")
        for part, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):
            out[f"{m.group(1)}{part}.{m.group(2)}"] = chunk.contiguous()
    return out


def _trunk_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP's `module.` prefix; from a whole open_clip/LoTLIP checkpoint (image trunk under
    `visual.trunk.`, text tower and logit_scale beside it) keep the image trunk only."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.trunk.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("visual.trunk.")}
    return state


def _timm_vit(
    path: Path, state: dict[str, torch.Tensor], heads: int | None, cfg_width: int | None
) -> TowerWeights:
    state = _trunk_only(state)
    for marker, what in _TIMM_UNSUPPORTED.items():
        if any(marker in k for k in state):
            raise ValueError(
                f"{path}: {what} ('{marker}' keys); the ViT tower here is timm's plain "
                "class-token ViT (e.g. vit_base_patch16_224.augreg_in21k)"
            )
    renamed, unknown = rename(state, _TIMM_VIT, _PREFIXES, _TIMM_IGNORED)
    if unknown:
        raise ValueError(f"{path}: keys that are not a timm ViT trunk: {unknown[:5]}")
    for ours, theirs in (
        ("patch.weight", "patch_embed.proj.weight"),
        ("cls_token", "cls_token"),
        ("pos_emb", "pos_embed"),
        ("ln_final.weight", "norm.weight"),
        ("layers.0.fc1.weight", "blocks.0.mlp.fc1.weight"),
    ):
        if ours not in renamed:
            raise ValueError(f"{path}: a timm ViT checkpoint needs {theirs!r} and has none")
    patch = renamed["patch.weight"]  # [width, 3, p, p]
    width, p = patch.shape[0], patch.shape[-1]
    if patch.ndim != 4 or patch.shape[1] != 3 or patch.shape[2] != p:
        raise ValueError(f"{path}: patch_embed.proj.weight has shape {tuple(patch.shape)}")
    layers = 1 + max((int(k.split(".")[1]) for k in renamed if k.startswith("layers.")), default=-1)
    if layers == 0:
        raise ValueError(f"{path}: a timm ViT checkpoint without blocks.N keys")
    grid = math.isqrt(renamed["pos_emb"].shape[1] - 1)
    if renamed["pos_emb"].shape[1] != grid * grid + 1:
        raise ValueError(
            f"{path}: pos_embed has {renamed['pos_emb'].shape[1]} positions, not a square grid "
            "plus the class token"
        )
    shapes = {
        "image_size": grid * p,
        "patch_size": p,
        "vision_width": width,
        "vision_layers": layers,
        "vision_heads": _timm_heads(path, width, heads, cfg_width),
        "vision_mlp": renamed["layers.0.fc1.weight"].shape[0],
        "vision_eps": _TIMM_EPS,
    }
    return TowerWeights(str(path), "timm-vit", _split_qkv(renamed, path), shapes)


def load_tower(tower: nn.Module, weights: TowerWeights) -> None:
    """Copy weights into tower, in place; any missing, unexpected or misshapen tensor is an
    error naming the checkpoint."""
    ours = tower.state_dict()
    wrong = [
        f"{k}: {tuple(t.shape)} vs {tuple(ours[k].shape)}"
        for k, t in weights.state.items()
        if k in ours and t.shape != ours[k].shape
    ]
    missing = [k for k in ours if k not in weights.state and k not in weights.new]
    unexpected = [k for k in weights.state if k not in ours]
    if wrong or missing or unexpected:
        raise ValueError(
            f"{weights.source}: weights do not fit the {weights.kind} tower "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]})"
        )
    tower.load_state_dict(weights.state, strict=False)
