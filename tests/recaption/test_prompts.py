"""Prompts rendered from a checkpoint's chat template or the family's format, per family, checked
against the official formats written out by hand (system prompts included)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from recaption.families import FAMILIES, INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM, LLAVA_SYSTEM
from recaption.prompts import find_chat_template, prompt_renderer, render_chat_template
from toyworld.tiny_models import CHAT_TEMPLATES

Q = "Describe this image in detail."

# The official prompts for one image and Q, as their sources produce them.
# LLaVA-1.5, haotian-liu/LLaVA llava/conversation.py conv_vicuna_v1 (SeparatorStyle.TWO, sep " "),
# "<image>\n" before the text (llava/train/train.py, mm_use_im_start_end off).
LLAVA_ORIGINAL = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. "
    f"USER: <image>\n{Q} ASSISTANT:"
)
# llava-hf/llava-1.5-7b-hf chat_template.json (and its model card's prompt).
LLAVA_HF = f"USER: <image>\n{Q} ASSISTANT:"
# Qwen/Qwen2-VL-7B-Instruct and Qwen2.5-VL chat_template.json.
QWEN = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{Q}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Salesforce/blip2-opt-2.7b model card; vLLM's template_blip2.jinja.
BLIP2 = f"Question: {Q} Answer:"
# OpenGVLab/InternVL internvl_chat/internvl/conversation.py, SeparatorStyle.MPT get_prompt.
INTERNLM2_CHAT = (
    "<|im_start|>system\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
    "英文名叫InternVL, 是一个有用无害的人工智能助手。<|im_end|>"
    f"<|im_start|>user\n<image>\n{Q}<|im_end|><|im_start|>assistant\n"
)
PHI3_CHAT = (
    "<|system|>\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
    "英文名叫InternVL, 是一个有用无害的人工智能助手。<|end|>"
    f"<|user|>\n<image>\n{Q}<|end|><|assistant|>\n"
)
INTERNVL2_5 = (
    "<|im_start|>system\n你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
    "联合开发的多模态大语言模型。<|im_end|>\n"
    f"<|im_start|>user\n<image>\n{Q}<|im_end|>\n<|im_start|>assistant\n"
)
# transformers' InternVL converter's chat_template (the "-hf" releases).
INTERNVL_HF = f"<|im_start|>user\n<IMG_CONTEXT>\n{Q}<|im_end|>\n<|im_start|>assistant\n"


def _cfg(family: str, path: Path, **kw) -> SimpleNamespace:
    return SimpleNamespace(family=family, path=str(path), trust_remote_code=False, **kw)


@pytest.fixture(scope="module")
def tokenizer():
    """A small ChatML-ish tokenizer (BOS `<s>` added on encode), saved into test folders."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from toyworld.tiny_models import _QWEN_SPECIALS, train_bpe

    specials = ["<s>", "</s>", "<image>", "<IMG_CONTEXT>"] + _QWEN_SPECIALS
    obj = train_bpe(specials, corpus=["a photo of a cat"] * 20, vocab_size=400)
    obj.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", obj.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=obj, bos_token="<s>", eos_token="</s>")


def _folder(
    tmp_path: Path, tokenizer, archs: list[str], chat: str | None = None, config: dict | None = None
) -> Path:
    root = tmp_path / "ckpt"
    root.mkdir()
    tokenizer.save_pretrained(root)
    tok_cfg = json.loads((root / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (root / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (root / "chat_template.jinja").unlink(missing_ok=True)
    if chat is not None:
        (root / "chat_template.json").write_text(json.dumps({"chat_template": chat}))
    (root / "config.json").write_text(json.dumps({"architectures": archs, **(config or {})}))
    return root


# --- the family formats (no template in the folder) ----------------------------------------


@pytest.mark.parametrize(
    "family,arch,expected",
    [
        ("llava-1.5", "LlavaForConditionalGeneration", LLAVA_ORIGINAL),
        ("qwen2-vl", "Qwen2VLForConditionalGeneration", QWEN),
        ("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", QWEN),
        ("blip-2", "Blip2ForConditionalGeneration", BLIP2),
        ("internvl", "InternVLForConditionalGeneration", INTERNVL_HF),
    ],
)
def test_family_format_without_a_template(tmp_path, tokenizer, family, arch, expected):
    render = prompt_renderer(_cfg(family, _folder(tmp_path, tokenizer, [arch])))
    assert render.source == "family"
    assert render(Q) == expected


@pytest.mark.parametrize(
    "template,llm,expected",
    [
        ("internlm2-chat", "InternLM2ForCausalLM", INTERNLM2_CHAT),  # InternVL2-2B/8B/26B
        ("Hermes-2", "Qwen2ForCausalLM", INTERNLM2_CHAT),  # InternVL2-1B: same text
        ("phi3-chat", "Phi3ForCausalLM", PHI3_CHAT),  # InternVL2-4B
        ("internvl2_5", "Qwen2ForCausalLM", INTERNVL2_5),  # InternVL2.5
        (None, "Phi3ForCausalLM", PHI3_CHAT),  # no `template`: from the LLM
        (None, "InternLM2ForCausalLM", INTERNLM2_CHAT),
    ],
)
def test_internvl_chat_model_format_from_its_config(tmp_path, tokenizer, template, llm, expected):
    config = {"llm_config": {"architectures": [llm]}}
    if template:
        config["template"] = template
    # Its tokenizer's own (text-only) template is not what the model's chat() uses.
    root = _folder(tmp_path, tokenizer, ["InternVLChatModel"], "{{ 'IGNORED' }}", config)
    render = prompt_renderer(_cfg("internvl", root))
    assert render(Q) == expected
    assert render.source == ("checkpoint" if template else "family")


def test_internvl_unknown_conversation_template_names_the_file(tmp_path, tokenizer):
    root = _folder(tmp_path, tokenizer, ["InternVLChatModel"], "x", {"template": "vicuna"})
    with pytest.raises(ValueError, match=r"config\.json.*'vicuna'.*families\.py"):
        prompt_renderer(_cfg("internvl", root))


def test_system_prompts_are_the_official_ones():
    assert LLAVA_SYSTEM in LLAVA_ORIGINAL
    assert INTERNVL2_SYSTEM in INTERNLM2_CHAT and INTERNVL2_SYSTEM in PHI3_CHAT
    assert INTERNVL2_5_SYSTEM in INTERNVL2_5


# --- templates the checkpoints ship ---------------------------------------------------------


@pytest.mark.parametrize(
    "family,arch,expected",
    [
        ("llava-1.5", "LlavaForConditionalGeneration", LLAVA_HF),
        ("qwen2-vl", "Qwen2VLForConditionalGeneration", QWEN),
        ("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", QWEN),
        ("internvl", "InternVLForConditionalGeneration", INTERNVL_HF),
    ],
)
def test_checkpoint_template_is_rendered(tmp_path, tokenizer, family, arch, expected):
    from toyworld.tiny_vlms import INTERNVL_HF_CHAT, QWEN2_5_VL_CHAT

    templates = {**CHAT_TEMPLATES, "qwen2.5-vl": QWEN2_5_VL_CHAT, "internvl": INTERNVL_HF_CHAT}
    render = prompt_renderer(_cfg(family, _folder(tmp_path, tokenizer, [arch], templates[family])))
    assert (render.source, render.detail) == ("checkpoint", "chat_template.json")
    assert render(Q) == expected


def test_template_wins_over_the_family_and_adds_its_system_prompt(tmp_path, tokenizer):
    template = (
        "{{ bos_token }}[SYS]{% for m in messages %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endfor %}{% if add_generation_prompt %}[GEN]{% endif %}"
    )
    root = _folder(tmp_path, tokenizer, ["LlavaForConditionalGeneration"], template)
    # The tokenizer adds <s> itself: the template's own is dropped, so the engine sees one.
    assert prompt_renderer(_cfg("llava-1.5", root))(Q) == f"[SYS]<image>{Q}[GEN]"


def test_text_only_tokenizer_template_gets_the_placeholder(tmp_path, tokenizer):
    # An LLM's own template (string content, as InternVL2's tokenizer_config ships).
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    root = _folder(tmp_path, tokenizer, ["LlavaForConditionalGeneration"])
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    (root / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
    render = prompt_renderer(_cfg("llava-1.5", root))
    assert render.detail == "tokenizer_config.json"
    assert render(Q) == f"<|im_start|>user\n<image>\n{Q}<|im_end|>\n<|im_start|>assistant\n"


def test_string_only_template_is_not_fed_a_list(tmp_path, tokenizer):
    # blip-2 has no placeholder: the list of parts must not pass for a prompt.
    template = "{% for m in messages %}Q: {{ m['content'] }}{% endfor %} A:"
    root = _folder(tmp_path, tokenizer, ["Blip2ForConditionalGeneration"], template)
    assert prompt_renderer(_cfg("blip-2", root))(Q) == f"Q: {Q} A:"


def test_template_files_in_transformers_order(tmp_path):
    assert find_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "D"},
                ]
            }
        )
    )
    assert find_chat_template(tmp_path) == ("D", "tokenizer_config.json")
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert find_chat_template(tmp_path) == ("J", "chat_template.json")
    (tmp_path / "chat_template.jinja").write_text("K")
    assert find_chat_template(tmp_path) == ("K", "chat_template.jinja")
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "chat_template.json").write_text("{not json")
    with pytest.raises(ValueError, match="chat_template.json"):
        find_chat_template(tmp_path)


def test_template_without_the_image_is_refused_at_load(tmp_path, tokenizer):
    root = _folder(tmp_path, tokenizer, ["LlavaForConditionalGeneration"], "{{ 'nothing' }}")
    with pytest.raises(ValueError, match=r"ckpt/chat_template\.json: .*one user turn"):
        prompt_renderer(_cfg("llava-1.5", root))


def test_template_runs_in_the_sandbox():
    # A template reaching for Python internals fails instead of running them.
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ValueError, match="did not render"):
        render_chat_template(evil, Q, placeholder="<image>")


def test_every_family_has_a_fallback_with_its_placeholder():
    for fam in FAMILIES.values():
        text = fam.format_prompt(Q)
        assert text.count(Q) == 1
        if fam.image_placeholder:
            assert text.count(fam.image_placeholder) == 1
            assert text.index(fam.image_placeholder) < text.index(Q)


def test_toy_captioners_train_on_the_prompt_the_engine_renders():
    # toyworld's captioners render from their checkpoints' templates; the text is what it was
    # before prompts came from templates (the toy results stay comparable).
    from toyworld.captioners import chat_prompt

    assert chat_prompt("llava-1.5", Q) == LLAVA_HF
    assert chat_prompt("qwen2-vl", Q) == QWEN
