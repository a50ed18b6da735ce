"""`longcap tiny-models DIR`: small randomly initialised VLMs that vLLM runs on a CPU.

One folder per family, named as a config spells the family (`DIR/llava-1.5`, `DIR/qwen2-vl`),
each a complete Hugging Face checkpoint (config, safetensors weights, tokenizer, processor, chat
template) usable as a model `path`. Nothing is downloaded: the tokenizer is a byte-level BPE
trained here on generated captions, and the weights are drawn from a seeded generator, so the
same call gives the same files. The shapes follow what vLLM's CPU backend accepts (attention
head size 64, see shared/ENVIRONMENT.md). Captions from random weights are gibberish; they
exercise every part of the pipeline but say nothing about quality.

The InstructBLIP ones (`instructblip`: Vicuna-style Llama; `instructblip-t5`: FlanT5-style
encoder-decoder) run on the transformers engine only.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

TINY_FAMILIES = (
    "llava-1.5",
    "qwen2-vl",
    "qwen2.5-vl",
    "blip-2",
    "internvl",
    "sharegpt4v",
    "instructblip",
    "instructblip-t5",
)
_VOCAB = 2048
_LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
# Tiny models that are a variant of a family, named apart: name -> family.
_VARIANT_OF = {"instructblip-t5": "instructblip"}
_T5_SPECIALS = ["<pad>", "</s>", "<unk>", "<image>"]  # T5's ids 0, 1, 2; pad starts decoding
_QFORMER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]  # BERT's names; pad id 0 as Q-Former's
_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _corpus() -> list[str]:
    from toyworld.sample_data import synthetic_long_captions

    prompts = [
        "USER: ASSISTANT: Describe the image in detail.",
        "What is in this picture? Write a long, detailed caption.",
        "system You are a helpful assistant. user assistant",
    ]
    return prompts * 20 + synthetic_long_captions(2000, seed=7)


def train_bpe(specials: list[str], corpus: list[str] | None = None, vocab_size: int = _VOCAB):
    """A byte-level BPE `tokenizers.Tokenizer` trained here on `corpus` (default: generated long
    captions); byte-level so that any prompt or caption text encodes and decodes exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer)
    return tok


def llava_tokenizer(tokenizer_object):
    """The LLaVA-1.5 special tokens around a trained `tokenizers.Tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def qwen_tokenizer(tokenizer_object):
    """The Qwen2-VL special tokens around a trained `tokenizers.Tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


# The chat templates the real checkpoints ship, so a tiny model's prompt is rendered the way the
# real one's is (recaption/prompts.py). llava-hf/llava-1.5-7b-hf chat_template.json: no system
# prompt, images first, "ASSISTANT:" to generate.
_LLAVA_CHAT = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen/Qwen2-VL-7B-Instruct chat_template.json: ChatML, "You are a helpful assistant." unless the
# conversation brings its own system turn.
_QWEN_CHAT = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# family -> the chat template its tiny checkpoint ships (filled in below as builders are added).
CHAT_TEMPLATES = {"llava-1.5": _LLAVA_CHAT, "qwen2-vl": _QWEN_CHAT}


def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def llava_config(tok, text: dict | None = None, vision: dict | None = None, **llava_kw):
    """A LlavaConfig for `tok` (a `llava_tokenizer`); `text` / `vision` override the tiny
    defaults (Llama 128 wide x 2 layers, heads of 64; CLIP 64 wide x 2 layers, 56 px, patch 14)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text_cfg = LlamaConfig(
        **{
            "vocab_size": len(tok),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "max_position_embeddings": 1024,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            **(text or {}),
        }
    )
    vision_cfg = CLIPVisionConfig(
        **{
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
            "projection_dim": 64,
            **(vision or {}),
        }
    )
    kw = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default", **llava_kw}
    return LlavaConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        **kw,
    )


def llava_processor(tok, image_size: int, patch_size: int):
    """A LlavaProcessor whose CLIP image processor turns any square image into image_size px
    (shortest edge, then centre crop), so every input gives the same number of image tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        # The CLIP tower adds a CLS token that the "default" strategy drops again: without this
        # the processor expands <image> to one token fewer than the tower yields.
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_CHAT,
    )


def save_llava(model, processor, out: Path) -> Path:
    """Save a LLaVA checkpoint vLLM CPU loads: weights (vision keys renamed), processor,
    tokenizer with the chat template."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _rename_llava_vision_weights(out)
    processor.save_pretrained(out)
    tok = processor.tokenizer
    tok.chat_template = _LLAVA_CHAT
    tok.save_pretrained(out)
    return out


def make_llava(out: Path, seed: int = 0) -> Path:
    """Tiny LLaVA-1.5: CLIP vision tower (56 px, patch 14) + 2-layer Llama, byte-level BPE."""
    from transformers import LlavaForConditionalGeneration

    tok = llava_tokenizer(train_bpe(_LLAVA_SPECIALS))
    cfg = llava_config(tok)
    _seed_all(seed)
    model = LlavaForConditionalGeneration(cfg)
    return save_llava(model, llava_processor(tok, 56, 14), out)


def _rename_llava_vision_weights(out: Path) -> None:
    """transformers 5 saves the CLIP tower as `vision_tower.embeddings.*`; vLLM 0.32 loads
    `vision_tower.vision_model.*`. Rewrite the names so both load the checkpoint."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for name, t in tensors.items():
        for prefix in ("model.vision_tower.", "vision_tower."):
            if name.startswith(prefix) and not name.startswith(prefix + "vision_model."):
                name = prefix + "vision_model." + name[len(prefix) :]
                break
        renamed[name] = t
    save_file(renamed, path, metadata={"format": "pt"})


def qwen2_vl_config(tok, text: dict | None = None, vision: dict | None = None):
    """A Qwen2VLConfig for `tok` (a `qwen_tokenizer`); `text` / `vision` override the tiny
    defaults (Qwen2 128 wide x 2 layers, heads of 64; vision 2 blocks, patch 14, merge 2)."""
    from transformers import Qwen2VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 8, 8]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            **(text or {}),
        },
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 128,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **(vision or {}),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def qwen2_vl_processor(tok, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112):
    """A Qwen2VLProcessor whose image processor keeps images between min_pixels and max_pixels
    (the processor rounds sides to multiples of patch x merge = 28)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_QWEN_CHAT,
    )


def save_qwen2_vl(model, processor, out: Path) -> Path:
    """Save a Qwen2-VL checkpoint: weights, processor, tokenizer with the chat template."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tok = processor.tokenizer
    tok.chat_template = _QWEN_CHAT
    tok.save_pretrained(out)
    return out


def make_qwen2_vl(out: Path, seed: int = 0) -> Path:
    """Tiny Qwen2-VL: 2-block vision tower (patch 14, merge 2) + 2-layer Qwen2, byte-level BPE."""
    from transformers import Qwen2VLForConditionalGeneration

    tok = qwen_tokenizer(train_bpe(_QWEN_SPECIALS))
    cfg = qwen2_vl_config(tok)
    _seed_all(seed)
    model = Qwen2VLForConditionalGeneration(cfg)
    # 56x56 px -> 4x4 patches -> 4 image tokens after the 2x2 merge: tiny and fast.
    return save_qwen2_vl(model, qwen2_vl_processor(tok), out)


def instructblip_config(
    tok,
    qformer_tok,
    text: str = "llama",
    vision: dict | None = None,
    qformer: dict | None = None,
    llm: dict | None = None,
    num_query_tokens: int = 8,
):
    """A tiny InstructBlipConfig: EVA-style vision tower (56 px, patch 14, 64 wide x 2), a 2-layer
    Q-Former with 8 queries (the real ones: 32), and a 2-layer Llama (Vicuna) or T5 (FlanT5);
    `vision` / `qformer` / `llm` (Llama only) override the tiny sizes."""
    from transformers import InstructBlipConfig, LlamaConfig, T5Config

    if text == "llama":
        text_cfg = llava_config(tok, text=llm).text_config
    else:
        text_cfg = T5Config(
            vocab_size=len(tok),
            d_model=64,
            d_kv=32,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            feed_forward_proj="gated-gelu",  # as FlanT5
            tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )
    assert isinstance(text_cfg, LlamaConfig | T5Config)
    return InstructBlipConfig(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
            **(vision or {}),
        },
        qformer_config={
            "vocab_size": len(qformer_tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "cross_attention_frequency": 1,
            "pad_token_id": qformer_tok.pad_token_id,
            **(qformer or {}),
        },
        text_config=text_cfg.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )


def instructblip_processor(tok, qformer_tok, image_size: int = 56, num_query_tokens: int = 8):
    """An InstructBlipProcessor: BLIP image processor (image_size px square), the language
    model's tokenizer (its `<image>` token repeated num_query_tokens times before the prompt)
    and the Q-Former's own tokenizer (the instruction goes to the Q-Former too)."""
    from transformers import BlipImageProcessor, InstructBlipProcessor

    return InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tok,
        qformer_tokenizer=qformer_tok,
        num_query_tokens=num_query_tokens,
    )


def instructblip_tokenizers(text: str = "llama"):
    """(language model tokenizer, Q-Former tokenizer), byte-level BPE trained here; `text`
    "llama" (Vicuna's special tokens) or "t5" (T5's: pad 0 starts decoding)."""
    from transformers import PreTrainedTokenizerFast

    if text not in ("llama", "t5"):
        raise ValueError(f"text must be 'llama' or 't5', got {text!r}")
    # `<image>` is in the vocabulary but not named as the tokenizer's image_token: transformers
    # 5.19's InstructBlipProcessor then wraps it itself (given as a name, it fails on a str).
    if text == "llama":
        specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
        tok = PreTrainedTokenizerFast(
            tokenizer_object=train_bpe(_LLAVA_SPECIALS), unk_token="<unk>", **specials
        )
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=train_bpe(_T5_SPECIALS),
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
        )
    qformer_tok = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(_QFORMER_SPECIALS, vocab_size=512),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    return tok, qformer_tok


def make_instructblip(out: Path, seed: int = 0, text: str = "llama") -> Path:
    """Tiny InstructBLIP, `text` "llama" (the Vicuna releases, decoder-only) or "t5" (the FlanT5
    releases, encoder-decoder); random weights, byte-level BPE tokenizers (the Q-Former's too).
    Transformers only: vLLM has no InstructBLIP (docs/SCALING.md section 2)."""
    from transformers import InstructBlipForConditionalGeneration

    tok, qformer_tok = instructblip_tokenizers(text)
    cfg = instructblip_config(tok, qformer_tok, text)
    _seed_all(seed)
    model = InstructBlipForConditionalGeneration(cfg)
    if text == "t5":
        import torch

        # transformers ties T5's output layer to its input embeddings: random ones make the
        # decoder's start token (pad) its own best successor, and every caption empty. A zero
        # pad embedding (as a padding_idx would give) lets the random model write text.
        with torch.no_grad():
            model.get_input_embeddings().weight[tok.pad_token_id] = 0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    instructblip_processor(tok, qformer_tok, 56, cfg.num_query_tokens).save_pretrained(out)
    return out


def make_tiny_models(root: str | Path, families=TINY_FAMILIES, seed: int = 0) -> dict[str, Path]:
    """Create the tiny models under root; returns name -> folder. The names are family names,
    except "instructblip-t5": the `instructblip` family's FlanT5 (encoder-decoder) variant."""
    from toyworld.tiny_vlms import make_blip2, make_internvl, make_qwen2_5_vl

    builders = {
        "llava-1.5": make_llava,
        "qwen2-vl": make_qwen2_vl,
        "qwen2.5-vl": make_qwen2_5_vl,
        "blip-2": make_blip2,
        "internvl": make_internvl,
    }
    builders["sharegpt4v"] = make_sharegpt4v_released  # released layout: convert before use
    builders["instructblip"] = make_instructblip
    builders["instructblip-t5"] = functools.partial(make_instructblip, text="t5")
    root = Path(root)
    made = {}
    for fam in families:
        if fam not in builders:
            raise ValueError(f"no tiny model for family {fam!r}; one of {sorted(builders)}")
        made[fam] = builders[fam](root / fam, seed=seed)
        family = _VARIANT_OF.get(fam, fam)
        (root / fam / "longcap_tiny.json").write_text(json.dumps({"family": family, "seed": seed}))
    return made


def _sentencepiece_model(vocab_size: int = 1024) -> bytes:
    """A LLaMA-style SentencePiece BPE (<unk>, <s>, </s> = 0, 1, 2, byte fallback) trained here
    on generated captions: the `tokenizer.model` ShareGPT4V ships is Vicuna's, of this kind."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def make_sharegpt4v_released(out: Path, seed: int = 0, tower: Path | None = None) -> Path:
    """Tiny ShareGPT4V in its released layout (docs/CAPTIONERS.md): `out` holds a
    `Share4VLlamaForCausalLM` config with ShareGPT4V-7B's fields, .bin shards with their index,
    key names as transformers 4.31 saved them (RoPE `inv_freq` buffers included) and a
    SentencePiece tokenizer; the fine-tuned CLIP tower is a separate `CLIPVisionModel` folder
    (`tower`, default `<out>-vision-tower`) that `mm_vision_tower` names. vLLM cannot load it:
    `longcap convert-sharegpt4v` turns it into a llava-hf checkpoint."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tower = Path(tower) if tower is not None else out.parent / f"{out.name}-vision-tower"
    out.mkdir(parents=True, exist_ok=True)
    tower.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(_sentencepiece_model())
    vocab = 1024
    hidden, heads, layers, inter = 128, 2, 2, 256
    v_hidden, v_layers, image, patch = 64, 3, 56, 14
    _seed_all(seed)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            tie_word_embeddings=False,
        )
    )
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=v_hidden,
            intermediate_size=2 * v_hidden,
            num_hidden_layers=v_layers,
            num_attention_heads=2,
            image_size=image,
            patch_size=patch,
            projection_dim=v_hidden,
            hidden_act="quick_gelu",
        )
    )
    llm = {k: t.to(torch.bfloat16) for k, t in llama.state_dict().items()}
    head_dim = hidden // heads
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    for i in range(layers):
        llm[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    proj = [torch.nn.Linear(v_hidden, hidden), torch.nn.Linear(hidden, hidden)]
    for idx, lin in zip(("0", "2"), proj, strict=True):
        llm[f"model.mm_projector.{idx}.weight"] = lin.weight.detach().to(torch.bfloat16)
        llm[f"model.mm_projector.{idx}.bias"] = lin.bias.detach().to(torch.bfloat16)
    # Two shards and an index, as the 7B release (pytorch_model-0000N-of-00002.bin).
    keys = list(llm)
    names = [f"pytorch_model-0000{i}-of-00002.bin" for i in (1, 2)]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for name, part in zip(names, halves, strict=True):
        torch.save({k: llm[k].contiguous() for k in part}, out / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in llm.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    # transformers 4.31's CLIPVisionModel prefixed its tensors with `vision_model.`.
    tower_sd = {f"vision_model.{k}": t.to(torch.bfloat16) for k, t in vision.state_dict().items()}
    torch.save(tower_sd, tower / "pytorch_model.bin")

    # The fields of Lin-Chen/ShareGPT4V-7B's config.json (docs/CAPTIONERS.md), tiny sizes.
    config = {
        "_name_or_path": "ShareGPT4V-7B",
        "architectures": ["Share4VLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "image_aspect_ratio": "pad",
        "image_grid_pinpoints": None,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 1024,
        "mm_hidden_size": v_hidden,
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(tower.resolve()),
        "model_type": "share4v",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "tune_entire_model": False,
        "tune_mm_mlp_adapter": False,
        "tune_vision_tower": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vision_tower_lr": None,
        "vocab_size": vocab,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 1024}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1024,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    # LLaVA's training pads with <unk> (pad_token = unk_token for the v1 format).
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))

    # Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12's config.json fields, tiny sizes.
    vc = vision.config
    tower_cfg = {
        "architectures": ["CLIPVisionModel"],
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": vc.hidden_act,
        "hidden_size": vc.hidden_size,
        "image_size": vc.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": vc.intermediate_size,
        "layer_norm_eps": vc.layer_norm_eps,
        "model_type": "clip_vision_model",
        "num_attention_heads": vc.num_attention_heads,
        "num_channels": 3,
        "num_hidden_layers": vc.num_hidden_layers,
        "patch_size": vc.patch_size,
        "projection_dim": vc.projection_dim,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
    }
    (tower / "config.json").write_text(json.dumps(tower_cfg, indent=2))
    preprocessor = {
        "crop_size": {"height": image, "width": image},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": image},
    }
    (tower / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return out
