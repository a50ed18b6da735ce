"""The Ray actor that owns one vLLM engine and captions whole units with it.

The engine is loaded once, when the actor starts; each call captions one decoded input shard,
cleans the texts and writes the unit's Parquet file itself (to the shared output folder), so the
driver only moves small summaries. Ray restarts a dead actor (`max_restarts`); the driver then
sends the unit again.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from typing import Any

from recaption.clean import clean_caption
from recaption.units import DecodedShard, unit_path, unit_record, write_unit
from shards import schema as S

FAIL_EMPTY_OUTPUT = "empty_output"


class EngineWorker:
    """Plain class (testable without Ray); `EngineActor` below is its Ray actor form."""

    def __init__(self, model_cfg: Any) -> None:
        from recaption.engine import make_engine

        self.cfg = model_cfg
        try:
            self.engine = make_engine(model_cfg)
        except Exception as exc:
            # vLLM's errors may not pickle; a plain message reaches the driver intact.
            raise RuntimeError(
                f"model {model_cfg.name!r} ({model_cfg.family}, {model_cfg.path}): "
                f"engine failed to load: {type(exc).__name__}: {exc}"
            ) from None

    def ready(self) -> float:
        return self.engine.load_seconds

    def caption_unit(self, decoded: DecodedShard, output: str) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        rows: dict[str, dict[str, Any]] = {}
        generated = prompt_tokens = 0
        for start in range(0, len(decoded.keys), cfg.batch_size):
            keys = decoded.keys[start : start + cfg.batch_size]
            images = decoded.images[start : start + cfg.batch_size]
            for gen in self.engine.generate(keys, images):
                generated += gen.generated_tokens
                prompt_tokens += gen.prompt_tokens
                clean = clean_caption(gen.raw_text, gen.finish_reason)
                ok = clean.status == "ok"
                rows[gen.key] = {
                    "key": gen.key,
                    "status": S.STATUS_OK if ok else FAIL_EMPTY_OUTPUT,
                    "error": None if ok else "the model generated no usable text",
                    "model": cfg.name,
                    "prompt": gen.prompt,
                    "text": clean.text if ok else None,
                    "raw_text": gen.raw_text,
                    "finish_reason": gen.finish_reason,
                    "generated_tokens": gen.generated_tokens,
                    "flags": list(clean.flags),
                }
        for key, (status, error) in decoded.failures.items():
            rows[key] = {"key": key, "status": status, "error": error, "model": cfg.name}
        ordered = [rows[k] for k in decoded.order]
        record = unit_record(cfg, decoded.inputs)
        write_unit(unit_path(output, cfg.name, decoded.shard), ordered, record)
        return {
            "model": cfg.name,
            "shard": decoded.shard,
            "images": len(ordered),
            "captioned": sum(r["status"] == S.STATUS_OK for r in ordered),
            "failures": dict(Counter(r["status"] for r in ordered if r["status"] != S.STATUS_OK)),
            "generated_tokens": generated,
            "prompt_tokens": prompt_tokens,  # 0 from engines that do not count them
            "engine_images": len(decoded.keys),
            "seconds": time.perf_counter() - t0,
        }


@functools.cache
def actor_class():
    """The Ray actor class, built lazily (importing this module needs no Ray) and once."""
    import ray

    return ray.remote(EngineWorker)
