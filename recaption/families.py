"""The MLLM families longcap can recaption with: prompt formats and engine defaults.

A family fixes how a user prompt and one image become the text prompt the model was trained on,
and the vLLM settings that suit it. When a checkpoint ships its own chat template, the prompt is
rendered from that (recaption/prompts.py); the formats below are the fallback for folders that
ship none, written after the official ones:

- llava-1.5: `{system} USER: <image>\n{prompt} ASSISTANT:` with Vicuna v1's system prompt: the
  format LLaVA-1.5 was trained and evaluated in (haotian-liu/LLaVA @c121f04,
  llava/conversation.py line 242 `conv_vicuna_v1`, SeparatorStyle.TWO with sep " ";
  scripts/v1_5/finetune.sh `--version v1`; 12 of the 14 scripts/v1_5/eval/*.sh use
  `--conv-mode vicuna_v1`, the Q-Bench two `llava_v1`).
  The llava-hf conversions (llava-hf/llava-1.5-7b-hf, the layout vLLM loads) ship a
  chat_template.json without the system prompt (`USER: <image>\n{prompt} ASSISTANT:`, as
  their model card prompts and openvinotoolkit/openvino.genai
  src/cpp/src/tokenizer/chat_template_fallback_map.hpp records for "llava-1.5 ...
  chat_template.json"): a checkpoint's own template wins, so those run as their publisher
  documents them; a folder with no template gets the training format (ShareGPT4V's repo keeps
  the same `conv_vicuna_v1` as its `v1` and default conversation: InternLM/InternLM-XComposer
  @5d01372, projects/ShareGPT4V/share4v/conversation.py). ShareGPT4V's captioner and
  ShareGPT4V-7B are LLaVA-1.5 models.
- sharegpt4v: ShareGPT4V-7B/13B converted to llava-hf (`longcap convert-sharegpt4v`,
  recaption/convert_sharegpt4v.py): LLaVA-1.5's format after its vicuna_v1 system prompt, as it
  was fine-tuned (docs/CAPTIONERS.md cites the files).
- qwen2-vl / qwen2.5-vl: ChatML with the default system prompt "You are a helpful assistant." and
  `<|vision_start|><|image_pad|><|vision_end|>` before the text: the chat_template.json of
  Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (`{% if loop.first and
  message['role'] != 'system' %}<|im_start|>system\\nYou are a helpful assistant.<|im_end|>`).
- blip-2: `Question: {prompt} Answer:`, the prompt of the Salesforce/blip2-opt-2.7b model card and
  vLLM 0.32's fallback template (vllm/transformers_utils/chat_templates/template_blip2.jinja);
  vLLM inserts the 32 query-token placeholders at the start itself. BLIP-2 checkpoints ship no
  chat template. vLLM runs BLIP-2, not InstructBLIP, in 0.32.
- internvl: the checkpoints differ (see INTERNVL_FORMATS). OpenGVLab's own folders
  (`InternVLChatModel`, remote code) name their conversation template in config.json
  (`template`), defined in OpenGVLab/InternVL internvl_chat/internvl/conversation.py (commit
  2410d1d: `Hermes-2` line 352, `internlm2-chat` 367, `phi3-chat` 381, `internvl2_5` 395),
  with `<image>\\n` before the question (modeling_internvl_chat.py `chat()`); vLLM expands
  `<image>` to `<img><IMG_CONTEXT>...</img>` (vllm/model_executor/models/internvl.py,
  `get_placeholder_str`). The transformers-native "-hf" releases
  (`InternVLForConditionalGeneration`) ship a ChatML chat template with no system prompt and
  `<IMG_CONTEXT>\\n` for the image (transformers' models/internvl/convert_internvl_weights_to_hf.py,
  `chat_template`), which vLLM 0.32 runs as InternS1ForConditionalGeneration
  (models/interns1.py) without remote code.
- instructblip: the plain instruction, nothing around it (Salesforce/instructblip-vicuna-7b and
  -flan-t5-xl); the processor puts the 32 Q-Former query tokens before it and gives the
  instruction to the Q-Former too. Sources: the HF model card of Salesforce/instructblip-vicuna-7b
  (README.md at revision c3442527, last changed in f46d9e4; usage:
  `processor(images=image, text=prompt)`, `prompt = "What is unusual about this image?"`) and
  LAVIS (salesforce/LAVIS at 506965b, lavis/models/blip2_models/blip2_vicuna_instruct.py lines
  262-276 and 354-363: the prompt string as given, tokenised with left padding after the query
  embeddings; blip2_t5_instruct.py lines 293-305 and 384-394: the same for FlanT5, padded on
  the right). vLLM cannot run it: the family runs on the `transformers` engine (`engines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recaption.convert_sharegpt4v import SHAREGPT4V_TEMPLATE

_QWEN_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)

# Vicuna v1's system prompt, as LLaVA's conv_vicuna_v1 writes it ("user", not "human": the
# older conv_vicuna_v0 and conv_llava_v1 differ).
LLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# InternVL's system prompts (conversation.py): InternVL2's (Hermes-2, internlm2-chat,
# phi3-chat) and InternVL2.5's.
INTERNVL2_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)
INTERNVL2_5_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的"
    "多模态大语言模型。"
)

# InternVL's chat formats, by the conversation-template name an InternVLChatModel config.json
# carries in `template` ("-hf": the transformers-native releases). conversation.py's MPT style:
# system_template + sep, then role + message + sep per turn, the open assistant role last.
INTERNVL_FORMATS: dict[str, str] = {
    # InternVL2-2B/8B/26B (InternLM2-chat LLMs). Separator `<|im_end|>`, no newline after it.
    "internlm2-chat": (
        f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|>"
        "<|im_start|>user\n<image>\n{prompt}<|im_end|><|im_start|>assistant\n"
    ),
    # InternVL2-1B/40B/76B (Qwen2, Nous-Hermes-2 LLMs): the same text as internlm2-chat.
    "Hermes-2": (
        f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|>"
        "<|im_start|>user\n<image>\n{prompt}<|im_end|><|im_start|>assistant\n"
    ),
    # InternVL2-4B (Phi-3-mini LLM).
    "phi3-chat": (
        f"<|system|>\n{INTERNVL2_SYSTEM}<|end|><|user|>\n<image>\n{{prompt}}<|end|><|assistant|>\n"
    ),
    # InternVL2.5 (InternLM2.5 and Qwen2.5 LLMs): separator `<|im_end|>\n`.
    "internvl2_5": (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\n<image>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    ),
    # transformers' InternVLForConditionalGeneration releases (OpenGVLab/InternVL3-1B-hf, ...).
    "-hf": "<|im_start|>user\n<IMG_CONTEXT>\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
}
# An InternVLChatModel config without `template`: the format its LLM was tuned in.
INTERNVL_FORMAT_BY_LLM = {
    "InternLM2ForCausalLM": "internlm2-chat",
    "Phi3ForCausalLM": "phi3-chat",
    "Qwen2ForCausalLM": "internvl2_5",
    "LlamaForCausalLM": "Hermes-2",
}


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # the HF `architectures` entries this format fits
    template: str  # {prompt} is replaced by the user's prompt
    image_size: int  # longer side images are resized to before the engine (CPU-side)
    max_model_len: int = 4096
    engine_defaults: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    # Architectures whose checkpoints load Python code from the model folder: such a model runs
    # only when its config says `trust_remote_code: true` (pipeline.recaption_config).
    remote_code_architectures: tuple[str, ...] = ()
    # The text the engine expands into the image's tokens (None: the engine inserts them).
    image_placeholder: str | None = None
    # Named alternatives to `template` (InternVL's chat formats), chosen per checkpoint.
    variants: dict[str, str] = field(default_factory=dict)
    # The built-in engines (recaption.engine.ENGINES) that can run the family; the first is the
    # one a model config gets when it names none. An engine named `package.module:Class` is
    # the user's own and always allowed.
    engines: tuple[str, ...] = ("vllm", "transformers", "openai")

    def format_prompt(self, prompt: str, variant: str | None = None) -> str:
        """The prompt in this family's format (or its named variant's)."""
        template = self.template if variant is None else self.variants[variant]
        return template.replace("{prompt}", prompt)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llava-1.5",
            ("LlavaForConditionalGeneration",),
            LLAVA_SYSTEM + " USER: <image>\n{prompt} ASSISTANT:",
            image_size=336,
            stop=("</s>", "USER:"),
            image_placeholder="<image>",
        ),
        Family(
            "qwen2-vl",
            ("Qwen2VLForConditionalGeneration",),
            _QWEN_TEMPLATE,
            image_size=448,
            stop=("<|im_end|>",),
            image_placeholder="<|image_pad|>",
        ),
        Family(
            "qwen2.5-vl",
            ("Qwen2_5_VLForConditionalGeneration",),
            _QWEN_TEMPLATE,
            image_size=448,
            stop=("<|im_end|>",),
            image_placeholder="<|image_pad|>",
        ),
        Family(
            "blip-2",
            ("Blip2ForConditionalGeneration",),
            "Question: {prompt} Answer:",
            image_size=224,
            max_model_len=2048,
        ),
        Family(
            "internvl",
            ("InternVLChatModel", "InternVLForConditionalGeneration"),
            INTERNVL_FORMATS["internvl2_5"],
            image_size=448,
            stop=("<|im_end|>", "<|end|>"),
            # OpenGVLab's InternVL2/2.5 folders ship their model code; the "-hf" releases
            # (InternVLForConditionalGeneration) are native to transformers and need none.
            remote_code_architectures=("InternVLChatModel",),
            image_placeholder="<image>",
            variants=INTERNVL_FORMATS,
        ),
        # ShareGPT4V-7B/13B after `longcap convert-sharegpt4v` (recaption/convert_sharegpt4v.py):
        # a LLaVA-1.5 model prompted in its training format, vicuna_v1 with its system prompt
        # (InternLM-XComposer projects/ShareGPT4V share4v/conversation.py:253-263, --version v1
        # in scripts/sharegpt4v/slurm_finetune_7b.sh:32). The released layout is refused by the
        # config with the command that converts it.
        Family(
            "sharegpt4v",
            ("LlavaForConditionalGeneration",),
            SHAREGPT4V_TEMPLATE,
            image_size=336,
            stop=("</s>", "USER:"),
        ),
        Family(
            "instructblip",
            ("InstructBlipForConditionalGeneration",),
            "{prompt}",
            image_size=224,
            max_model_len=2048,
            # Not in vLLM 0.32's registry, and its Transformers backend cannot run it either
            # (Q-Former input ids; the FlanT5 releases are encoder-decoder).
            engines=("transformers", "openai"),
        ),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; one of {sorted(FAMILIES)}") from None
