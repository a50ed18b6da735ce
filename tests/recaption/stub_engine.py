"""A stand-in caption engine for the Ray fault tests: instant captions, and hangs on demand.

Named in a model config as `engine: tests.recaption.stub_engine:HangingEngine`. Its
`engine_kwargs` say which units hang (by shard name, the first five digits of every key):
`hang_shards` hang every time, `hang_once_shards` hang the first time only (a file in
`marker_dir` remembers that it hung); `fail_shards` raise (an engine error); `delay_s` makes
every call that long (an engine slower than decoding). No model is loaded, so an actor starts
in about a second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recaption.engine import Generation


class HangingEngine:
    def __init__(self, model_cfg: Any) -> None:
        self.cfg = model_cfg
        kw = model_cfg.engine_kwargs
        self.hang = set(kw.get("hang_shards", ()))
        self.hang_once = set(kw.get("hang_once_shards", ()))
        self.marker_dir = Path(kw.get("marker_dir", "."))
        self.fail = set(kw.get("fail_shards", ()))
        self.delay = float(kw.get("delay_s", 0.0))
        self.load_seconds = 0.0

    def generate(self, keys: list[str], images: list[Any]) -> list[Generation]:
        shard = keys[0][:5] if keys else ""
        once = self.marker_dir / f"hung-{shard}"
        if shard in self.hang or (shard in self.hang_once and not once.exists()):
            once.touch()
            time.sleep(3600)  # a hung engine: only the unit deadline ends this
        time.sleep(self.delay)
        if shard in self.fail:
            raise RuntimeError(f"stub engine: cannot caption shard {shard}")
        return [
            Generation(k, "Describe the image in detail.", f"A picture numbered {k}.", "stop", 6)
            for k in keys
        ]


class SlowEngine(HangingEngine):
    """HangingEngine whose every `generate` call also takes `engine_kwargs["seconds"]` (default
    1): units that last long enough for a test to lose a node while they run."""

    def __init__(self, model_cfg: Any) -> None:
        super().__init__(model_cfg)
        self.seconds = float(model_cfg.engine_kwargs.get("seconds", 1.0))

    def generate(self, keys: list[str], images: list[Any]) -> list[Generation]:
        time.sleep(self.seconds)
        return super().generate(keys, images)
