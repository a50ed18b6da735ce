"""`longcap convert-sharegpt4v SRC DST`: ShareGPT4V's released checkpoint -> a llava-hf checkpoint.

ShareGPT4V-7B/13B ship as `Share4VLlamaForCausalLM` (model_type `share4v`): a LLaMA/Vicuna
checkpoint holding the projector (`model.mm_projector.0/2`), whose `mm_vision_tower` names a
fine-tuned CLIP ViT-L/14-336 released as a separate `CLIPVisionModel` folder. vLLM loads neither;
both together are a LLaVA-1.5 model, which vLLM runs as `LlavaForConditionalGeneration` in the
llava-hf layout. This module maps one onto the other (docs/CAPTIONERS.md has the table and the
sources):

- weights: `model.*` / `lm_head.weight` -> `language_model.model.*` / `language_model.lm_head.*`,
  `model.mm_projector.{0,2}` -> `multi_modal_projector.linear_{1,2}`, the tower's
  `vision_model.*` -> `vision_tower.vision_model.*`; every source tensor is used exactly once:
  derived buffers (`rotary_emb.inv_freq`, `position_ids`) are checked against the config, not
  copied, and any other tensor left over is an error, as is a missing one or a wrong shape;
- config: LLaMA fields -> `text_config`, the tower's config -> `vision_config`,
  `mm_vision_select_layer` -> `vision_feature_layer`, `mm_vision_select_feature` patch/cls_patch
  -> `vision_feature_select_strategy` default/full, an added `<image>` (and `<pad>`) token with
  the embeddings grown by the mean row (LLaVA's own rule for added tokens);
- processor: the tower's image processor as `LlavaImageProcessor`, with `do_pad` (pad to a square
  of the mean colour, ShareGPT4V's `image_aspect_ratio: pad`), the tokenizer, and a chat template
  that renders ShareGPT4V's training conversation format (vicuna_v1, with its system prompt).

Pure mapping (`map_state_dicts`, `llava_config_dict`) is kept apart from the file I/O
(`load_checkpoint`, `convert_sharegpt4v`) so tests can check each tensor's destination.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The architectures of the released, unconverted layout (the `architectures` of its config.json;
# the 4bit/ mirrors renamed it LlavaLlamaForCausalLM, the original LLaVA class, same layout).
RELEASED_ARCHITECTURES = ("Share4VLlamaForCausalLM", "LlavaLlamaForCausalLM")
# Hub ids of the released chat models, which a config cannot point at directly.
RELEASED_HUB_IDS = ("Lin-Chen/ShareGPT4V-7B", "Lin-Chen/ShareGPT4V-13B")

# ShareGPT4V's fine-tuning ran with `--version v1` (scripts/sharegpt4v/slurm_finetune_7b.sh:32),
# i.e. conv_templates["v1"] = conv_vicuna_v1 (share4v/conversation.py:253-263, 354), the template
# its evaluation scripts use too (`--conv-mode vicuna_v1`, scripts/sharegpt4v/eval/*.sh).
SHAREGPT4V_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# SeparatorStyle.TWO (conversation.py:50-59): system + " ", "USER: " + msg + " ",
# "ASSISTANT: " + msg + "</s>", and "ASSISTANT:" to generate; the image goes first as
# "<image>\n" (share4v/eval/run_share4v.py:35-39). One space more after <image> than that
# string: ShareGPT4V tokenizes the text after the image as a chunk of its own
# (`tokenizer_image_token`, share4v/mm_utils.py:46-66), where SentencePiece starts the chunk with
# a lone "▁" (Vicuna's id 29871) before "\n"; vLLM tokenizes the prompt in one piece, and
# "<image> \n" gives it the same token ids as training and inference saw.
SHAREGPT4V_TEMPLATE = SHAREGPT4V_SYSTEM + " USER: <image> \n{prompt} ASSISTANT:"

# Every literal is an expression so that Jinja's whitespace control cannot eat a separator.
CHAT_TEMPLATE = (
    "{%- set system = '" + SHAREGPT4V_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'][0]['text'] -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for m in messages -%}"
    "{{- 'USER: ' if m['role'] == 'user' else 'ASSISTANT: ' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}"
    "{%- for c in m['content'] -%}"
    "{{- '<image> \\n' if c['type'] == 'image' else c['text'] -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- ' ' if m['role'] == 'user' else '</s>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
_LLAMA_LAYER_KEYS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
_CLIP_LAYER_KEYS = tuple(
    f"{m}.{p}"
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "mlp.fc1",
        "mlp.fc2",
        "layer_norm2",
    )
    for p in ("weight", "bias")
)
_SHARD_BYTES = 5 << 30  # output safetensors shard size (as transformers' save_pretrained)


class ConversionError(ValueError):
    """A released checkpoint that cannot be converted; the message names the file or key."""


def released_layout_error(archs: list[str] | None = None, path: str | None = None) -> str | None:
    """Why a recaption config cannot use this model as it is (the released ShareGPT4V layout,
    by architecture or hub id), with the command that converts it; None if it is not that."""
    hit = sorted(set(archs or ()) & set(RELEASED_ARCHITECTURES))
    if not hit and path not in RELEASED_HUB_IDS:
        return None
    convert = (
        "convert it once with `longcap convert-sharegpt4v SRC DST [--vision-tower TOWER_DIR]` "
        "and point `path` at DST (family: sharegpt4v)"
    )
    if hit == ["LlavaLlamaForCausalLM"]:
        # The original LLaVA code base's class: ShareGPT4V's mirrors use it, and so do
        # LLaVA-1.5's own original checkpoints (whose llava-hf conversion is published).
        return (
            f"{path} is in the original LLaVA code base's layout (LlavaLlamaForCausalLM), which "
            "vLLM cannot load: for LLaVA-1.5 use its llava-hf release (llava-hf/llava-1.5-7b-hf); "
            f"for a ShareGPT4V checkpoint {convert}"
        )
    what = f"architecture {hit[0]}" if hit else f"hub id {path}"
    return (
        f"{path} is ShareGPT4V's released layout ({what}: a LLaMA checkpoint plus a separate "
        f"vision tower) that vLLM cannot load; {convert}"
    )


# --- reading --------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing ({what})") from None
    except ValueError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object ({what})")
    return data


def _load_file(path: Path) -> dict[str, Any]:
    """One weight file; .bin through torch.load(weights_only=True): a checkpoint from a
    stranger must not run code when read."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a pre-1.6 (non-zip) file cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(folder: str | Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """All tensors of a checkpoint folder (safetensors or .bin, one file or shards listed by
    their index json) and, for error messages, the file each key came from."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            weight_map = _read_json(index, f"{what} shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index}: no `weight_map`")
            files = sorted(set(weight_map.values()))
            break
    else:
        files = [n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()]
        if not files:
            raise ConversionError(
                f"{folder}: no weights for the {what} (model.safetensors, pytorch_model.bin or "
                "a *.index.json with its shards)"
            )
        files = files[:1]  # both present: the safetensors copy of the same weights
        weight_map = None
    tensors: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise ConversionError(f"{path}: listed in the {what}'s index but missing")
        part = _load_file(path)
        for key, t in part.items():
            if key in tensors:
                raise ConversionError(f"{path}: key {key} also in {origin[key]}")
            tensors[key] = t
            origin[key] = str(path)
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ConversionError(
                f"{folder}: the index lists {len(missing)} keys its shards lack, e.g. {missing[0]}"
                f" (expected in {folder / weight_map[missing[0]]})"
            )
    return tensors, origin


def find_vision_tower(src: Path, cfg: dict[str, Any], vision_tower: str | None) -> Path:
    """The tower folder: --vision-tower, else `mm_vision_tower` when it is a folder (absolute,
    or next to SRC), else a copy in the local Hugging Face cache; never a download."""
    if vision_tower is not None:
        path = Path(vision_tower).expanduser()
        if not (path / "config.json").is_file():
            raise ConversionError(f"--vision-tower {path}: no config.json there (a CLIP folder)")
        return path
    named = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if not named:
        raise ConversionError(f"{src / 'config.json'}: no `mm_vision_tower`; pass --vision-tower")
    for cand in (Path(named).expanduser(), src.parent / Path(named).name):
        if (cand / "config.json").is_file():
            return cand
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(named, local_files_only=True))
        if (cached / "config.json").is_file():
            return cached
    except Exception:  # not cached, or not a hub id: say what to do below
        pass
    raise ConversionError(
        f"{src / 'config.json'}: the vision tower `mm_vision_tower: {named}` is not a local folder"
        f" (ShareGPT4V releases it separately); download it, e.g. `huggingface-cli download "
        f"{named} --local-dir TOWER_DIR`, and pass --vision-tower TOWER_DIR"
    )


# --- mapping (pure) -------------------------------------------------------------------------


@dataclass
class MappedWeights:
    """The llava-hf state dict and the accounting of every source key."""

    tensors: dict[str, Any]
    source_of: dict[str, str]  # destination key -> source key ("llm:..." / "tower:...")
    verified: list[str] = field(default_factory=list)  # derived buffers checked, not copied


def _expect(t: Any, shape: tuple[int, ...], key: str, origin: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ConversionError(
            f"{origin}: {key} has shape {tuple(t.shape)}, the config says {tuple(shape)}"
        )


def _text_dims(cfg: dict[str, Any]) -> dict[str, int]:
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        dims = {
            "hidden": hidden,
            "heads": heads,
            "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
            "inter": int(cfg["intermediate_size"]),
            "layers": int(cfg["num_hidden_layers"]),
            "vocab": int(cfg["vocab_size"]),
            "mm_hidden": int(cfg["mm_hidden_size"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"config.json: missing or bad field {exc}") from None
    return dims


def _vision_dims(vcfg: dict[str, Any]) -> dict[str, int]:
    try:
        return {
            "hidden": int(vcfg["hidden_size"]),
            "inter": int(vcfg["intermediate_size"]),
            "layers": int(vcfg["num_hidden_layers"]),
            "patch": int(vcfg["patch_size"]),
            "image": int(vcfg["image_size"]),
            "channels": int(vcfg.get("num_channels", 3)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"vision tower config.json: missing or bad field {exc}") from None


def _inv_freq(cfg: dict[str, Any], head_dim: int):
    import torch

    theta = float(cfg.get("rope_theta") or 10000.0)
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def map_state_dicts(
    llm: dict[str, Any],
    tower: dict[str, Any],
    cfg: dict[str, Any],
    vcfg: dict[str, Any],
    origin: dict[str, str] | None = None,
) -> MappedWeights:
    """Map the released tensors (LLM checkpoint `llm`, tower `tower`) to llava-hf names.

    Each expected key is taken once and its shape checked against the configs; what is left
    over afterwards is an error (an unknown tensor would be silently dropped otherwise). The
    vocabulary is not grown here (see `grow_vocab`)."""
    import torch

    origin = origin or {}
    t, v = _text_dims(cfg), _vision_dims(vcfg)
    if v["hidden"] != t["mm_hidden"]:
        raise ConversionError(
            f"config.json says mm_hidden_size {t['mm_hidden']}, the vision tower's config "
            f"hidden_size {v['hidden']}: this tower does not belong to this checkpoint"
        )
    out: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    verified: list[str] = []
    left_llm, left_tower = dict(llm), dict(tower)

    def take(pool: dict, name: str, key: str, dest: str, shape: tuple[int, ...]) -> None:
        where = origin.get(f"{name}:{key}", "the " + ("vision tower" if name == "tower" else "LLM"))
        if key not in pool:
            raise ConversionError(f"{where}: missing tensor {key} (needed for {dest})")
        tensor = pool.pop(key)
        _expect(tensor, shape, key, where)
        out[dest] = tensor
        source_of[dest] = f"{name}:{key}"

    h, hd = t["hidden"], t["head_dim"]
    take(left_llm, "llm", "model.embed_tokens.weight", "language_model.model.embed_tokens.weight",
         (t["vocab"], h))  # fmt: skip
    take(left_llm, "llm", "lm_head.weight", "language_model.lm_head.weight", (t["vocab"], h))
    take(left_llm, "llm", "model.norm.weight", "language_model.model.norm.weight", (h,))
    shapes = {
        "self_attn.q_proj.weight": (t["heads"] * hd, h),
        "self_attn.k_proj.weight": (t["kv_heads"] * hd, h),
        "self_attn.v_proj.weight": (t["kv_heads"] * hd, h),
        "self_attn.o_proj.weight": (h, t["heads"] * hd),
        "mlp.gate_proj.weight": (t["inter"], h),
        "mlp.up_proj.weight": (t["inter"], h),
        "mlp.down_proj.weight": (h, t["inter"]),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }
    inv_freq = _inv_freq(cfg, hd)
    for i in range(t["layers"]):
        for k in _LLAMA_LAYER_KEYS:
            take(left_llm, "llm", f"model.layers.{i}.{k}",
                 f"language_model.model.layers.{i}.{k}", shapes[k])  # fmt: skip
        # transformers 4.31 saved RoPE's inverse frequencies as a buffer; llava-hf recomputes
        # them from rope_theta, so check they agree instead of copying them.
        key = f"model.layers.{i}.self_attn.rotary_emb.inv_freq"
        if key in left_llm:
            got = left_llm.pop(key)
            if got.shape != inv_freq.shape or not torch.allclose(got.float(), inv_freq, rtol=1e-3):
                raise ConversionError(
                    f"{origin.get('llm:' + key, 'the LLM')}: {key} does not match rope_theta "
                    f"{cfg.get('rope_theta', 10000.0)} and head size {hd}: a RoPE variant this "
                    "converter does not map"
                )
            verified.append(f"llm:{key}")
    for src_i, dst_i in (("0", "linear_1"), ("2", "linear_2")):
        in_dim = t["mm_hidden"] if src_i == "0" else h
        take(left_llm, "llm", f"model.mm_projector.{src_i}.weight",
             f"multi_modal_projector.{dst_i}.weight", (h, in_dim))  # fmt: skip
        take(left_llm, "llm", f"model.mm_projector.{src_i}.bias",
             f"multi_modal_projector.{dst_i}.bias", (h,))  # fmt: skip

    # The tower as transformers 4.31's CLIPVisionModel saved it: `vision_model.*`.
    d, n_pos = v["hidden"], (v["image"] // v["patch"]) ** 2 + 1
    tw = {
        "embeddings.class_embedding": (d,),
        "embeddings.patch_embedding.weight": (d, v["channels"], v["patch"], v["patch"]),
        "embeddings.position_embedding.weight": (n_pos, d),
        "pre_layrnorm.weight": (d,),
        "pre_layrnorm.bias": (d,),
        "post_layernorm.weight": (d,),
        "post_layernorm.bias": (d,),
    }
    for i in range(v["layers"]):
        for k in _CLIP_LAYER_KEYS:
            module, param = k.rsplit(".", 1)
            if module == "mlp.fc1":
                shape = (v["inter"], d) if param == "weight" else (v["inter"],)
            elif module == "mlp.fc2":
                shape = (d, v["inter"]) if param == "weight" else (d,)
            elif module.startswith("self_attn."):
                shape = (d, d) if param == "weight" else (d,)
            else:  # layer_norm1/2
                shape = (d,)
            tw[f"encoder.layers.{i}.{k}"] = shape
    for k, shape in tw.items():
        take(left_tower, "tower", f"vision_model.{k}", f"vision_tower.vision_model.{k}", shape)
    key = "vision_model.embeddings.position_ids"  # a buffer in checkpoints before 4.31
    if key in left_tower:
        got = left_tower.pop(key)
        if got.flatten().tolist() != list(range(n_pos)):
            raise ConversionError(f"{origin.get('tower:' + key, 'the tower')}: {key} not 0..N-1")
        verified.append(f"tower:{key}")

    leftovers = [f"llm:{k}" for k in sorted(left_llm)] + [f"tower:{k}" for k in sorted(left_tower)]
    if leftovers:
        first = leftovers[0]
        where = origin.get(first, "")
        hint = ""
        if any(k.startswith("llm:model.vision_tower.") for k in leftovers):
            hint = (
                " (this checkpoint embeds vision tower weights; the released loader ignores "
                "them and loads mm_vision_tower, so which to use is ambiguous)"
            )
        raise ConversionError(
            f"{len(leftovers)} source tensors have no place in the llava-hf layout, e.g. "
            f"{first.split(':', 1)[1]} in {where or first.split(':')[0]}{hint}: "
            f"{[k.split(':', 1)[1] for k in leftovers[:8]]}"
        )
    return MappedWeights(out, source_of, verified)


def grow_vocab(tensors: dict[str, Any], new_rows: int) -> None:
    """Add `new_rows` rows to the input and output embeddings, each the mean of the existing
    rows: LLaVA's rule for tokens it adds (share4v_arch.py:250-260). The `<image>` row is never
    read (image features replace it) and `<pad>` is never attended, so the value only has to be
    harmless."""
    import torch

    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        w = tensors[key]
        mean = w.float().mean(dim=0, keepdim=True).to(w.dtype)
        tensors[key] = torch.cat([w, mean.expand(new_rows, -1)], dim=0).contiguous()


def llava_config_dict(
    cfg: dict[str, Any], vcfg: dict[str, Any], vocab_size: int, image_token_index: int, pad_id: int
) -> dict[str, Any]:
    """The LlavaConfig fields for the released config `cfg` and tower config `vcfg`."""
    select = cfg.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if select not in strategies:
        raise ConversionError(
            f"config.json: mm_vision_select_feature {select!r}: one of {sorted(strategies)}"
        )
    checks = [
        ("mm_projector_type", cfg.get("mm_projector_type", "linear") == "mlp2x_gelu",
         "only mlp2x_gelu has a llava-hf equivalent"),
        ("mm_use_im_start_end", not cfg.get("mm_use_im_start_end", False),
         "<im_start>/<im_end> around the image are not in the llava-hf format"),
        ("mm_use_im_patch_token", not cfg.get("mm_use_im_patch_token", False),
         "the <im_patch> token changes the vocabulary; not supported"),
        ("rope_scaling", not cfg.get("rope_scaling"), "RoPE scaling is not mapped"),
    ]  # fmt: skip
    for name, ok, why in checks:
        if not ok:
            raise ConversionError(f"config.json: {name}: {cfg.get(name)!r}: {why}")
    text_keys = (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act",
        "rope_theta", "bos_token_id", "eos_token_id", "initializer_range", "head_dim",
    )  # fmt: skip
    text = {k: cfg[k] for k in text_keys if cfg.get(k) is not None}
    text.update(
        model_type="llama",
        vocab_size=vocab_size,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    vision = {k: val for k, val in vcfg.items() if not k.startswith("_")}
    vision.pop("architectures", None)
    vision.pop("transformers_version", None)
    vision["model_type"] = "clip_vision_model"
    v = _vision_dims(vcfg)
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": text,
        "vision_config": vision,
        "image_token_index": image_token_index,
        "image_seq_length": (v["image"] // v["patch"]) ** 2,
        "projector_hidden_act": "gelu",  # nn.GELU() in build_vision_projector (exact gelu)
        "multimodal_projector_bias": True,
        "vision_feature_layer": int(cfg.get("mm_vision_select_layer", -2)),
        "vision_feature_select_strategy": strategies[select],
        "pad_token_id": pad_id,
        "tie_word_embeddings": False,
        "dtype": cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16",
    }


# --- writing --------------------------------------------------------------------------------


def _save_tensors(tensors: dict[str, Any], out: Path) -> int:
    """Safetensors in shards of at most _SHARD_BYTES, with an index when more than one."""
    from safetensors.torch import save_file

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key in tensors:
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key].contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata={"format": "pt"})
        return 1
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return len(shards)


def _processor(tower: Path, cfg: dict[str, Any], llava: dict[str, Any], tokenizer):
    """LlavaProcessor for the LlavaConfig fields `llava`: the tower's image processor settings as
    a LlavaImageProcessor (which can pad to a square of the mean colour, as ShareGPT4V's
    `image_aspect_ratio: pad` does), the tokenizer and the chat template."""
    from transformers import CLIPImageProcessor, LlavaImageProcessor, LlavaProcessor

    if not (tower / "preprocessor_config.json").is_file():
        raise ConversionError(
            f"{tower / 'preprocessor_config.json'}: missing; the released tower folder has it "
            "(ShareGPT4V's CLIPVisionTower loads its CLIPImageProcessor from there)"
        )
    clip = CLIPImageProcessor.from_pretrained(tower)
    image_processor = LlavaImageProcessor(
        do_pad=cfg.get("image_aspect_ratio") == "pad",
        size=dict(clip.size),
        crop_size=dict(clip.crop_size),
        do_center_crop=clip.do_center_crop,
        image_mean=list(clip.image_mean),
        image_std=list(clip.image_std),
        resample=clip.resample,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=int(llava["vision_config"]["patch_size"]),
        vision_feature_select_strategy=llava["vision_feature_select_strategy"],
        # CLIP adds a CLS token (the "default" strategy drops it): the processor counts it.
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


@dataclass
class ConversionReport:
    out: str
    vision_tower: str
    llm_tensors: int
    tower_tensors: int
    written_tensors: int
    verified_not_copied: int
    added_tokens: list[str]
    image_token_index: int
    vocab_size: int
    pad_to_square: bool
    shards: int


def convert_sharegpt4v(
    src: str | Path, dst: str | Path, vision_tower: str | Path | None = None
) -> ConversionReport:
    """Convert the released ShareGPT4V checkpoint at `src` (+ its vision tower) into a llava-hf
    checkpoint at `dst` (a new folder, written under a temporary name and renamed at the end)."""
    from transformers import AddedToken, AutoTokenizer, LlavaConfig
    from transformers.utils import logging as hf_logging

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and any(dst.iterdir()):
        raise ConversionError(f"{dst}: exists and is not empty; choose a new folder")
    cfg = _read_json(src / "config.json", "the released ShareGPT4V config")
    archs = cfg.get("architectures") or []
    if not set(archs) & set(RELEASED_ARCHITECTURES):
        raise ConversionError(
            f"{src / 'config.json'}: architectures {archs}, not ShareGPT4V's released layout "
            f"({list(RELEASED_ARCHITECTURES)}); a llava-hf checkpoint needs no conversion"
        )
    tower = find_vision_tower(src, cfg, None if vision_tower is None else str(vision_tower))
    vcfg = _read_json(tower / "config.json", "the vision tower's CLIPVisionConfig")
    if vcfg.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ConversionError(
            f"{tower / 'config.json'}: model_type {vcfg.get('model_type')!r}, expected "
            "clip_vision_model (ShareGPT4V-7B/13B use a CLIP ViT-L/14-336 tower)"
        )
    llm, llm_origin = load_checkpoint(src, "LLM")
    tw, tw_origin = load_checkpoint(tower, "vision tower")
    origin = {f"llm:{k}": v for k, v in llm_origin.items()}
    origin.update({f"tower:{k}": v for k, v in tw_origin.items()})
    mapped = map_state_dicts(llm, tw, cfg, vcfg, origin)

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns that model_type share4v is not a tokenizer's
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{src}: cannot load the tokenizer ({exc})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    vocab = int(cfg["vocab_size"])
    if len(tokenizer) != vocab:
        raise ConversionError(
            f"{src}: the tokenizer has {len(tokenizer)} tokens, config.json vocab_size {vocab}"
        )
    added = [IMAGE_TOKEN] + ([] if tokenizer.pad_token is not None else [PAD_TOKEN])
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.chat_template = CHAT_TEMPLATE
    grow_vocab(mapped.tensors, len(tokenizer) - vocab)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llava = llava_config_dict(cfg, vcfg, len(tokenizer), image_id, tokenizer.pad_token_id)
    config = LlavaConfig(**llava)
    processor = _processor(tower, cfg, llava, tokenizer)  # checked before anything is written

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shards = _save_tensors(mapped.tensors, tmp)
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (src / "generation_config.json").is_file():
            shutil.copyfile(src / "generation_config.json", tmp / "generation_config.json")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the checkpoint is not
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConversionReport(
        out=str(dst),
        vision_tower=str(tower),
        llm_tensors=len(llm),
        tower_tensors=len(tw),
        written_tensors=len(mapped.tensors),
        verified_not_copied=len(mapped.verified),
        added_tokens=added,
        image_token_index=image_id,
        vocab_size=len(tokenizer),
        pad_to_square=cfg.get("image_aspect_ratio") == "pad",
        shards=shards,
    )
