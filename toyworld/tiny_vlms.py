"""Tiny qwen2.5-vl, blip-2 and internvl checkpoints for `longcap tiny-models` (see tiny_models).

Same recipe as toyworld/tiny_models.py: a byte-level BPE trained here, seeded random weights,
the shapes vLLM's CPU backend accepts (attention heads of 64), and the chat template the real
checkpoint ships (Qwen2.5-VL's; the InternVL "-hf" releases'; none for BLIP-2, whose real
checkpoints ship none). InternVL is written in transformers' own layout
(`InternVLForConditionalGeneration`), which vLLM 0.32 runs without code from the folder;
OpenGVLab's `InternVLChatModel` layout needs its Python files and so `trust_remote_code`.
"""

from __future__ import annotations

from pathlib import Path

from toyworld.tiny_models import _QWEN_SPECIALS, _seed_all, qwen_tokenizer, train_bpe

# Qwen/Qwen2.5-VL-7B-Instruct chat_template.json: Qwen2-VL's plus tool turns; the same text for a
# user turn of one image and a question (default system prompt included).
QWEN2_5_VL_CHAT = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['role'] == 'tool' %}<tool_response>\n"
    "{% endif %}{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% if message['role'] == 'tool' %}\n\n</tool_response>{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The template transformers' InternVL converter writes into the "-hf" releases
# (src/transformers/models/internvl/convert_internvl_weights_to_hf.py, `chat_template`):
# ChatML, no system prompt, `<IMG_CONTEXT>\n` for an image.
INTERNVL_HF_CHAT = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

_BLIP2_SPECIALS = ["<pad>", "</s>", "<unk>", "<image>"]
_INTERNVL_SPECIALS = _QWEN_SPECIALS + ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
# The tiny language models: 128 wide, 2 layers, 2 heads of 64 (vLLM CPU's head size).
_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def _save(model, processor, tok, template: str | None, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(out)
    return out


def make_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    """Tiny Qwen2.5-VL: 2-block windowed vision tower (patch 14, merge 2) + 2-layer Qwen2."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = qwen_tokenizer(train_bpe(_QWEN_SPECIALS))
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    cfg = Qwen2_5_VLConfig(
        text_config={
            **_TEXT,
            "vocab_size": len(tok),
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 8, 8]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 1,
            "out_hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    _seed_all(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_5_VL_CHAT,
    )
    return _save(model, processor, tok, QWEN2_5_VL_CHAT, out)


def make_blip2(out: Path, seed: int = 0) -> Path:
    """Tiny BLIP-2: ViT (56 px, patch 14) + 1-layer Q-Former with 4 queries + 2-layer OPT."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(_BLIP2_SPECIALS),
        pad_token="<pad>",
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    cfg = Blip2Config(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
            "image_size": 56,
            "patch_size": 14,
        },
        qformer_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "encoder_hidden_size": 64,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(tok),
            "hidden_size": 128,
            "word_embed_proj_dim": 128,
            "ffn_dim": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 1024,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        num_query_tokens=4,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    _seed_all(seed)
    model = Blip2ForConditionalGeneration(cfg)
    image_processor = BlipImageProcessor(size={"height": 56, "width": 56})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=4)
    return _save(model, processor, tok, None, out)


def make_internvl(out: Path, seed: int = 0) -> Path:
    """Tiny InternVL in transformers' layout: InternViT (56 px, patch 14, one tile, pixel
    shuffle 0.5 -> 4 image tokens) + MLP projector + 2-layer Qwen2."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        PreTrainedTokenizerFast,
    )

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(_INTERNVL_SPECIALS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    cfg = InternVLConfig(
        text_config={
            **_TEXT,
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tok.eos_token_id,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
            "image_size": [56, 56],
            "patch_size": [14, 14],
        },
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4,
    )
    _seed_all(seed)
    model = InternVLForConditionalGeneration(cfg)
    size = {"height": 56, "width": 56}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, min_patches=1, max_patches=1),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=4,
        chat_template=INTERNVL_HF_CHAT,
    )
    return _save(model, processor, tok, INTERNVL_HF_CHAT, out)
