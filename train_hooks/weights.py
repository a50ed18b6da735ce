"""Loading pretrained towers from local folders: a bert-base-uncased and a ViT, as transformers
saves them (config.json + model.safetensors or pytorch_model.bin). Nothing is downloaded.

Keys are renamed to the compact towers of `towers.py`; a missing or unexpected tower weight is an
error naming the folder, not a silent random init. The corner rows stay new (normal, std 0.02).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from train_hooks.model import LoTLIP, ModelConfig

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
_VIT = [
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


def _read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; give a folder saved by transformers")
    return json.loads(path.read_text())


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors or pytorch_model.bin in folder."""
    folder = Path(folder)
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def apply_pretrained_shapes(cfg: ModelConfig) -> ModelConfig:
    """cfg with tower shapes taken from the pretrained folders' config.json files."""
    if cfg.text_weights:
        c = _read_config(cfg.text_weights)
        cfg = replace(
            cfg,
            vocab_size=c["vocab_size"],
            text_width=c["hidden_size"],
            text_layers=c["num_hidden_layers"],
            text_heads=c["num_attention_heads"],
            text_mlp=c["intermediate_size"],
            max_positions=c.get("max_position_embeddings", 512),
            eps=c.get("layer_norm_eps", 1e-12),
        )
    if cfg.vision_weights:
        c = _read_config(cfg.vision_weights)
        cfg = replace(
            cfg,
            image_size=c["image_size"],
            patch_size=c["patch_size"],
            vision_width=c["hidden_size"],
            vision_layers=c["num_hidden_layers"],
            vision_heads=c["num_attention_heads"],
            vision_mlp=c["intermediate_size"],
        )
        pre = Path(cfg.vision_weights) / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            cfg = replace(
                cfg,
                image_mean=tuple(p.get("image_mean", cfg.image_mean)),
                image_std=tuple(p.get("image_std", cfg.image_std)),
            )
    return cfg


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], prefixes: tuple[str, ...]):
    """Map transformers names to ours; returns (renamed, names that matched no rule)."""
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
            unknown.append(name)
    return out, unknown


def _load_tower(tower: torch.nn.Module, folder: str, rules, prefixes, skip=()) -> None:
    state, _ = rename(read_state_dict(folder), rules, prefixes)
    missing, unexpected = tower.load_state_dict(state, strict=False)
    missing = [m for m in missing if m not in skip]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit the tower (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); is it a BERT / ViT folder saved by transformers?"
        )


def load_pretrained(model: LoTLIP, cfg: ModelConfig) -> None:
    """Load the towers named in cfg into model, in place."""
    if cfg.text_weights:
        _load_tower(model.text, cfg.text_weights, _BERT, ("bert.",), skip=("corner_emb",))
    if cfg.vision_weights:
        _load_tower(model.vision, cfg.vision_weights, _VIT, ("vit.",))
