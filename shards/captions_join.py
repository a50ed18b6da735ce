"""Joining the recaption stage's outputs to input samples during assembly.

`OUTPUT/captions/<model>/NNNNN.parquet` holds one row per key of input shard NNNNN. For every
sample of a shard folder and every model, the join yields one long-caption entry: the caption,
or the reason there is none (the unit's failure status, or `not_captioned` when the unit file
does not exist yet), so that per model every input row is accounted for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards import storage
from shards.inputs import InputError, InputSample

NOT_CAPTIONED = "not_captioned"
_FIELDS = ("text", "prompt", "finish_reason", "generated_tokens", "flags")


class CaptionJoin:
    """Caches the caption rows of the current input shard, one table per model."""

    def __init__(self, captions_dir: str | Path):
        root = storage.as_path(captions_dir)
        if (root / "captions").is_dir():
            root = root / "captions"  # the recaption OUTPUT folder was given
        if not root.is_dir():
            raise InputError(f"{root}: no such captions folder (expected OUTPUT/captions)")
        self.root = root
        self.models = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.models:
            raise InputError(f"{root}: no model folders (captions/<model>/NNNNN.parquet)")
        self._shard: str | None = None
        self._rows: dict[str, dict[str, dict[str, Any]] | None] = {}

    def _load(self, shard: str) -> None:
        self._shard = shard
        self._rows = {}
        for model in self.models:
            path = self.root / model / f"{shard}.parquet"
            if not path.exists():
                self._rows[model] = None
                continue
            try:
                table = pq.read_table(storage.random_access(path))
            except Exception as exc:
                raise InputError(f"{path}: unreadable caption file ({exc})") from exc
            if not {"key", "status", "text"} <= set(table.column_names):
                raise InputError(
                    f"{path}: not a longcap caption file (columns {table.column_names})"
                )
            self._rows[model] = {r["key"]: r for r in table.to_pylist()}

    def attach(self, sample: InputSample) -> None:
        """Add each model's long caption (or its absence, with the reason) to the sample."""
        if sample.shard is None:
            raise InputError(
                f"{sample.origin}: captions can only be joined to a folder of shards "
                "(the input the recaption job read)"
            )
        if sample.shard != self._shard:
            self._load(sample.shard)
        for model in self.models:
            rows = self._rows[model]
            row = None if rows is None else rows.get(sample.key)
            if row is None:
                where = "unit not written yet" if rows is None else "key absent from the unit"
                entry = {"text": None, "status": NOT_CAPTIONED, "error": where}
            elif row["status"] != "ok":
                entry = {"text": None, "status": row["status"]}
            else:
                entry = {f: row.get(f) for f in _FIELDS}
            sample.long_captions[model] = entry
