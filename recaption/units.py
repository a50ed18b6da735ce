"""Work units of the recaption stage: decode an input shard, write one model's captions of it.

A unit is (input shard, model). Its output `OUTPUT/captions/<model>/NNNNN.parquet` is written
under a temporary name and renamed when complete: its presence marks the unit done, so a rerun
skips it and a killed job loses only the units in flight. Every input key appears exactly once
in it, captioned (`status` "ok") or with the reason it was not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema as S

CAPTION_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("text", pa.string()),
        pa.field("raw_text", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("generated_tokens", pa.int32()),
        pa.field("flags", pa.list_(pa.string())),
    ],
    metadata={b"longcap.captions_version": b"1"},
)
CAPTION_COLUMNS = CAPTION_SCHEMA.names


def unit_path(output: str | Path, model: str, shard: str) -> Path:
    return Path(output) / "captions" / model / f"{shard}.parquet"


@dataclass
class DecodedShard:
    """An input shard's images, decoded and resized, in input order; failures kept by key."""

    shard: str
    keys: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # HxWx3 uint8 arrays
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (status, error)
    order: list[str] = field(default_factory=list)  # every key, in input order


def decode_image(data: bytes, max_side: int):
    """RGB uint8 array of an encoded image, its longer side cut to `max_side` (ratio kept);
    `shards.limits.ImageLimitError` over the pixel or aspect cap (checked before decoding)."""
    import numpy as np
    from PIL import Image

    from shards.limits import open_image

    with open_image(data) as im:
        if im.format == "JPEG":
            # Decode straight at the nearest scale >= the target: far less work for big JPEGs.
            im.draft("RGB", (max_side, max_side))
        im = im.convert("RGB")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return np.asarray(im)


def decode_shard(root: str, shard: str, max_side: int) -> DecodedShard:
    """Read one input shard and decode its images (runs in a Ray CPU task, not in an engine)."""
    from shards.inputs import load_image_bytes
    from shards.limits import ImageLimitError
    from shards.readers import read_shard

    out = DecodedShard(shard)
    seen: set[str] = set()
    for sample in read_shard(Path(root), shard):
        key = sample.key
        if key in seen:
            continue  # a duplicate key would break "one row per key"; the first one wins
        seen.add(key)
        out.order.append(key)
        if sample.status != S.STATUS_OK:
            out.failures[key] = (sample.status, sample.error or sample.status)
            continue
        data, missing = load_image_bytes(sample)
        if data is None:
            out.failures[key] = (S.FAIL_IMAGE_MISSING, missing)
            continue
        try:
            out.images.append(decode_image(data, max_side))
        except ImageLimitError as exc:
            out.failures[key] = (S.FAIL_IMAGE_LIMIT, f"{sample.origin}: {exc}")
            continue
        except Exception as exc:  # Pillow raises many types for bad bytes
            out.failures[key] = (
                S.FAIL_IMAGE_DECODE,
                f"{sample.origin}: {type(exc).__name__}: {exc}",
            )
            continue
        out.keys.append(key)
    return out


def write_unit(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write a unit's caption rows atomically (temporary name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA), tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_unit(path: Path) -> pa.Table:
    table = pq.read_table(path)
    missing = set(CAPTION_COLUMNS) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not a longcap caption file, missing columns {sorted(missing)}")
    return table
