"""The text prompt a model sees: rendered from its checkpoint's chat template, else its family's.

A checkpoint that ships a chat template (the processor's `chat_template.jinja`,
`chat_template.json` or `processor_config.json`, else the tokenizer's `tokenizer_config.json`)
gets its prompt from it: one user turn holding one image and the user text, rendered with
transformers' `apply_chat_template` and the generation prompt on, so the system prompt the
template adds is there too. InternVL's own folders (`InternVLChatModel`) are the exception: the
model's code formats prompts with the conversation template its config.json names (`template`),
not with the tokenizer's text-only template, so that name picks the format
(recaption/families.py INTERNVL_FORMATS). Anything else uses the family's format.

A template is Jinja written by whoever published the checkpoint: transformers renders it in
Jinja's immutable sandbox (docs/SECURITY.md).

    render = prompt_renderer(model_cfg)   # model_cfg: .family, .path, .trust_remote_code
    render("Describe the image.")         # the full prompt text for the engine
    render.source, render.detail          # "checkpoint" / "family", and which file or format
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recaption.families import INTERNVL_FORMAT_BY_LLM, Family, get_family

# Where a checkpoint folder keeps a chat template, in the order transformers' processors and
# tokenizers look (the processor's first: it is the one that knows about images).
_TEMPLATE_FILES = (
    ("chat_template.jinja", None),
    ("chat_template.json", "chat_template"),
    ("processor_config.json", "chat_template"),
    ("tokenizer_config.json", "chat_template"),
)


@dataclass(frozen=True)
class PromptRenderer:
    """Turns a user prompt into the model's full prompt text (one image, generation prompt on).

    `source` is "checkpoint" (the folder's chat template or its declared InternVL format) or
    "family" (the family's fallback format); `detail` names the file or format used."""

    family: Family
    source: str
    detail: str
    template: str | None = None  # a Jinja chat template, or None: a family format
    variant: str | None = None  # the family format's variant (InternVL), when not a template
    tokenizer: Any = None
    placeholder: str | None = None  # the image's text in the prompt (None: the engine adds it)

    def __call__(self, prompt: str) -> str:
        if self.template is None:
            return self.family.format_prompt(prompt, self.variant)
        return render_chat_template(
            self.template, prompt, self.tokenizer, self.placeholder, self.detail
        )


def find_chat_template(path: str | Path) -> tuple[str, str] | None:
    """(template, file it came from) for a checkpoint folder, or None if it ships none."""
    root = Path(path)
    for name, key in _TEMPLATE_FILES:
        f = root / name
        if not f.is_file():
            continue
        if key is None:
            return f.read_text(encoding="utf-8"), name
        try:
            value = json.loads(f.read_text(encoding="utf-8")).get(key)
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{f}: not a JSON object ({exc}); fix or remove the file") from None
        if isinstance(value, list):  # tokenizer_config's named templates: the default one
            value = next((t.get("template") for t in value if t.get("name") == "default"), None)
        if isinstance(value, str) and value.strip():
            return value, name
    return None


def _load_config(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def internvl_format(config: dict) -> str:
    """The InternVL chat format a checkpoint's config.json asks for (families.INTERNVL_FORMATS):
    its `template` for OpenGVLab's own layout, else the one its LLM was tuned in, "-hf" for the
    transformers-native layout."""
    if "InternVLForConditionalGeneration" in (config.get("architectures") or []):
        return "-hf"
    template = config.get("template")
    if template:
        return template
    llm = (config.get("llm_config") or {}).get("architectures") or []
    known = [INTERNVL_FORMAT_BY_LLM[a] for a in llm if a in INTERNVL_FORMAT_BY_LLM]
    return known[0] if known else "internvl2_5"


def _load_tokenizer(path: str | Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loader error means the same to the user
        raise ValueError(
            f"{path}: its chat template needs the folder's tokenizer, which did not load ({exc})"
        ) from exc


def prompt_renderer(model_cfg: Any) -> PromptRenderer:
    """The renderer for a model config (`.family`, `.path`, optional `.trust_remote_code`)."""
    family = get_family(model_cfg.family)
    path = Path(model_cfg.path)
    config = _load_config(path)
    archs = config.get("architectures") or []
    placeholder = family.image_placeholder
    if family.name == "internvl" and "InternVLForConditionalGeneration" in archs:
        placeholder = "<IMG_CONTEXT>"  # transformers' InternVLProcessor.image_token
    if family.name == "internvl" and "InternVLChatModel" in archs:
        # The model's chat() formats with this conversation template, not the tokenizer's.
        variant = internvl_format(config)
        if variant not in family.variants:
            raise ValueError(
                f"{path / 'config.json'}: InternVL conversation template {variant!r} is not one "
                f"longcap knows ({sorted(family.variants)}); add it to recaption/families.py"
            )
        if config.get("template"):
            source, detail = "checkpoint", f"config.json template={variant}"
        else:
            source, detail = "family", f"internvl:{variant} (from llm_config)"
        return PromptRenderer(family, source, detail, None, variant, None, placeholder)
    found = find_chat_template(path)
    if found is not None:
        template, name = found
        tok = _load_tokenizer(path, bool(getattr(model_cfg, "trust_remote_code", False)))
        renderer = PromptRenderer(family, "checkpoint", name, template, None, tok, placeholder)
        try:
            renderer("x")  # fail here, at load, not on the first batch
        except ValueError as exc:
            raise ValueError(f"{path / name}: {exc}") from None
        return renderer
    variant = internvl_format(config) if family.name == "internvl" else None
    detail = family.name if variant is None else f"{family.name}:{variant}"
    return PromptRenderer(family, "family", detail, None, variant, None, placeholder)


def render_chat_template(
    template: str,
    prompt: str,
    tokenizer: Any = None,
    placeholder: str | None = None,
    where: str = "chat template",
) -> str:
    """One user turn (an image, then `prompt`) rendered by a chat template, generation prompt on.

    Multimodal templates take a list of content parts; text-only ones (an LLM's own, as some
    checkpoints ship) take a string, into which the image goes as `placeholder` + newline, the
    way vLLM fills string-content templates. A template that emits the BOS token loses it when
    the tokenizer adds one itself, so the engine does not see two."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(conversation: list[dict]) -> str:
        if tokenizer is not None:  # its special tokens (bos_token, ...) fill the template
            return tokenizer.apply_chat_template(
                conversation, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        rendered, _ = render_jinja_template(
            [conversation], chat_template=template, add_generation_prompt=True
        )
        return rendered[0]

    parts = [{"type": "image"}, {"type": "text", "text": prompt}]
    string = (f"{placeholder}\n" if placeholder else "") + prompt
    text = None
    for content in (parts, string):
        try:
            text = render([{"role": "user", "content": content}])
        except Exception:  # noqa: BLE001 - a list-only or string-only template: try the other
            continue
        # A string-only template given parts prints them as a Python list: not a prompt.
        if (
            prompt in text
            and "'type':" not in text
            and (placeholder is None or placeholder in text)
        ):
            break
        text = None
    if text is None:
        raise ValueError(
            f"{where}: the chat template did not render one user turn with an image and text "
            f"(placeholder {placeholder!r}); set a family whose format fits, or fix the template"
        )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def _adds_bos(tokenizer: Any) -> bool:
    try:
        ids = tokenizer("").input_ids
    except Exception:  # noqa: BLE001
        return False
    return bool(ids) and ids[0] == tokenizer.bos_token_id
