"""A stand-in engine for the plan tests: instant captions, some of them cut at max_tokens.

Named in a model config as `engine: tests.pipeline.plan_stub_engine:CuttingEngine`. Its
`engine_kwargs`: `cut_keys` (keys whose caption stops at max_tokens: finish_reason "length")
and `words` (words per caption, default 12). Every caption is `words` words and says it generated
`words` tokens, so the counts a plan measures are known in advance.
"""

from __future__ import annotations

from typing import Any

from recaption.engine import Generation, choose_prompt

_WORDS = "a small red circle sits near the blue square in the upper left corner".split()


class CuttingEngine:
    def __init__(self, model_cfg: Any) -> None:
        self.cfg = model_cfg
        self.cut = set(model_cfg.engine_kwargs.get("cut_keys", ()))
        self.words = int(model_cfg.engine_kwargs.get("words", 12))
        self.load_seconds = 0.0

    def generate(self, keys: list[str], images: list[Any]) -> list[Generation]:
        out = []
        for key, _image in zip(keys, images, strict=True):
            text = " ".join(_WORDS[i % len(_WORDS)] for i in range(self.words)) + "."
            reason = "length" if key in self.cut else "stop"
            prompt = choose_prompt(self.cfg.prompts, self.cfg.seed, key)
            out.append(Generation(key, prompt, text, reason, self.words))
        return out
