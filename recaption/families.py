"""The MLLM families longcap can recaption with: prompt formats and engine defaults.

A family fixes how a user prompt and one image become the text prompt the model was trained on,
and the vLLM settings that suit it. Prompt formats are the ones the public checkpoints use
(Hugging Face model cards / chat templates):
- llava-1.5: `USER: <image>\\n{prompt} ASSISTANT:` (llava-hf/llava-1.5-7b-hf).
- sharegpt4v: ShareGPT4V-7B converted to llava-hf; LLaVA-1.5's format after its vicuna_v1
  system prompt, as it was trained (recaption/convert_sharegpt4v.py).
- qwen2-vl / qwen2.5-vl: ChatML with `<|vision_start|><|image_pad|><|vision_end|>` before the text.
- blip-2: `Question: {prompt} Answer:` (vLLM supports BLIP-2, not InstructBLIP, in 0.32).
- internvl: ChatML with `<image>\\n` before the text (InternVL2/2.5 chat models). The original
  `InternVLChatModel` folders run their own Python code: only with `trust_remote_code: true`.
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

    def format_prompt(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llava-1.5",
            ("LlavaForConditionalGeneration",),
            "USER: <image>\n{prompt} ASSISTANT:",
            image_size=336,
            stop=("</s>", "USER:"),
        ),
        Family(
            "qwen2-vl",
            ("Qwen2VLForConditionalGeneration",),
            _QWEN_TEMPLATE,
            image_size=448,
            stop=("<|im_end|>",),
        ),
        Family(
            "qwen2.5-vl",
            ("Qwen2_5_VLForConditionalGeneration",),
            _QWEN_TEMPLATE,
            image_size=448,
            stop=("<|im_end|>",),
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
            "<|im_start|>user\n<image>\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
            image_size=448,
            stop=("<|im_end|>",),
            # OpenGVLab's InternVL2/2.5 folders ship their model code; the "-hf" releases
            # (InternVLForConditionalGeneration) are native to transformers and need none.
            remote_code_architectures=("InternVLChatModel",),
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
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; one of {sorted(FAMILIES)}") from None
