"""The MLLM families longcap can recaption with: prompt formats and engine defaults.

A family fixes how a user prompt and one image become the text prompt the model was trained on,
and the vLLM settings that suit it. Prompt formats are the ones the public checkpoints use
(Hugging Face model cards / chat templates):
- llava-1.5: `USER: <image>\\n{prompt} ASSISTANT:` (llava-hf/llava-1.5-7b-hf). ShareGPT4V's
  captioner and ShareGPT4V-7B are LLaVA-1.5 models and use the same format.
- qwen2-vl / qwen2.5-vl: ChatML with `<|vision_start|><|image_pad|><|vision_end|>` before the text.
- blip-2: `Question: {prompt} Answer:` (vLLM supports BLIP-2, not InstructBLIP, in 0.32).
- internvl: ChatML with `<image>\\n` before the text (InternVL2/2.5 chat models). The original
  `InternVLChatModel` folders run their own Python code: only with `trust_remote_code: true`.
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
    # The built-in engines (recaption.engine.ENGINES) that can run the family; the first is the
    # one a model config gets when it names none. An engine named `package.module:Class` is
    # the user's own and always allowed.
    engines: tuple[str, ...] = ("vllm", "transformers", "openai")

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
