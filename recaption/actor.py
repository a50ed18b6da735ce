"""The engine worker: owns one caption engine and captions units with it, chunk by chunk.

The engine is loaded once, when the worker starts. A unit reaches it as a sequence of calls:
`caption_chunk` for each decoded chunk of the input shard, in order, then `finish_unit`, which
cleans nothing more but writes the unit's Parquet file itself (to the shared output folder), so
the scheduler only moves small summaries. Images wait in the worker until a whole engine batch
(`batch_size`) is there, so the engine sees the same batches whatever the chunk size; what is
held between calls is copied out of the chunk, so a chunk's memory (in Ray, its object) is freed
as soon as its call returns. The same class runs as a Ray actor (`actor_class`, the Ray
executor) or as a plain object in a thread (the local executor).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from recaption.clean import clean_caption
from recaption.units import (
    DecodedChunk,
    DecodedShard,
    UnitSpec,
    unit_path,
    unit_record,
    write_unit,
)
from shards import schema as S

FAIL_EMPTY_OUTPUT = "empty_output"


class UnitStateLost(RuntimeError):
    """A chunk came that does not follow the unit this worker holds (the worker restarted, or
    an earlier chunk failed): the scheduler sends the whole unit again."""


@dataclass
class _UnitState:
    unit: UnitSpec
    inputs: dict[str, Any]
    next_index: int = 0
    order: list[str] = field(default_factory=list)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_keys: list[str] = field(default_factory=list)
    batch_images: list[Any] = field(default_factory=list)
    generated: int = 0
    prompt_tokens: int = 0  # as the engine counted them (an endpoint's usage), 0 if unknown
    engine_images: int = 0
    seconds: float = 0.0


class EngineWorker:
    """Plain class (testable without Ray); `actor_class()` below is its Ray actor form."""

    def __init__(self, model_cfg: Any) -> None:
        from recaption.engine import make_engine

        self.cfg = model_cfg
        self._state: _UnitState | None = None
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

    def caption_chunk(self, unit: UnitSpec, chunk: DecodedChunk) -> int:
        """Take the next chunk of `unit` (chunk 0 starts it); caption every whole batch held.
        Returns the number of images taken."""
        t0 = time.perf_counter()
        if chunk.index == 0:
            self._state = _UnitState(unit, chunk.inputs)
        st = self._state
        if st is None or st.unit != unit or chunk.index != st.next_index:
            self._state = None
            raise UnitStateLost(
                f"unit {unit.shard} (try {unit.attempt}): chunk {chunk.index} came, this worker "
                f"expected {'chunk 0' if st is None or st.unit != unit else st.next_index}"
            )
        self._state = None  # until this chunk is taken whole: a failure drops the unit
        st.next_index += 1
        st.order += chunk.order
        st.failures.update(chunk.failures)
        st.batch_keys += chunk.keys
        st.batch_images += chunk.images
        st.engine_images += len(chunk.keys)
        size = self.cfg.batch_size
        while len(st.batch_keys) >= size:
            self._caption(st, st.batch_keys[:size], st.batch_images[:size])
            del st.batch_keys[:size], st.batch_images[:size]
        # Copy what waits for the next chunk: the chunk's own buffers (a Ray object) go free.
        st.batch_images = [_owned(im) for im in st.batch_images]
        st.seconds += time.perf_counter() - t0
        self._state = st
        return len(chunk.keys)

    def finish_unit(self, unit: UnitSpec, output: str) -> dict[str, Any]:
        """Caption what is left of `unit`, write its file atomically; returns its summary."""
        t0 = time.perf_counter()
        st, self._state = self._state, None
        if st is None or st.unit != unit:
            raise UnitStateLost(f"unit {unit.shard} (try {unit.attempt}): its chunks are not here")
        if st.batch_keys:
            self._caption(st, st.batch_keys, st.batch_images)
        cfg = self.cfg
        for key, (status, error) in st.failures.items():
            st.rows[key] = {"key": key, "status": status, "error": error, "model": cfg.name}
        ordered = [st.rows[k] for k in st.order]
        record = unit_record(cfg, st.inputs)
        write_unit(unit_path(output, cfg.name, unit.shard), ordered, record)
        return {
            "model": cfg.name,
            "shard": unit.shard,
            "images": len(ordered),
            "captioned": sum(r["status"] == S.STATUS_OK for r in ordered),
            "failures": dict(Counter(r["status"] for r in ordered if r["status"] != S.STATUS_OK)),
            "generated_tokens": st.generated,
            "prompt_tokens": st.prompt_tokens,
            "engine_images": st.engine_images,
            "seconds": st.seconds + time.perf_counter() - t0,
            "node": node_address(),
        }

    def caption_unit(self, decoded: DecodedShard, output: str) -> dict[str, Any]:
        """A whole decoded shard at once (one chunk): for tests and single-process use."""
        unit = UnitSpec(decoded.shard)
        chunk = DecodedChunk(
            decoded.shard,
            keys=decoded.keys,
            images=decoded.images,
            failures=decoded.failures,
            order=decoded.order,
            inputs=decoded.inputs,
        )
        self.caption_chunk(unit, chunk)
        return self.finish_unit(unit, output)

    def _caption(self, st: _UnitState, keys: list[str], images: list[Any]) -> None:
        """One engine call; its cleaned rows go into the unit's rows."""
        cfg = self.cfg
        for gen in self.engine.generate(keys, images):
            st.generated += gen.generated_tokens
            st.prompt_tokens += gen.prompt_tokens
            clean = clean_caption(gen.raw_text, gen.finish_reason)
            ok = clean.status == "ok"
            st.rows[gen.key] = {
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


def _owned(image: Any) -> Any:
    """The image in memory of its own (a view into a chunk, e.g. Ray's zero-copy, is copied)."""
    import numpy as np

    return image if getattr(image, "base", None) is None else np.array(image)


def node_address() -> str | None:
    """The address of the Ray node this runs on (None outside Ray): the run report counts units
    per node, which shows how a multi-node run spread its work."""
    import sys

    ray = sys.modules.get("ray")  # never import Ray here: EngineWorker runs without it too
    if ray is None or not ray.is_initialized():
        return None
    return ray.util.get_node_ip_address()


@functools.cache
def actor_class():
    """The Ray actor class, built lazily (importing this module needs no Ray) and once."""
    import ray

    return ray.remote(EngineWorker)
