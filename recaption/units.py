"""Work units of the recaption stage: decode an input shard, write one model's captions of it.

A unit is (input shard, model). Its shard is read once and decoded in chunks (`iter_chunks`,
`DecodedChunk`) that travel to the engine one by one, so memory does not grow with shard size.
Its output `OUTPUT/captions/<model>/NNNNN.parquet` is written under this run's temporary name,
fsynced and renamed when complete: its presence marks the unit done, so a rerun skips it and a
killed job loses only the units in flight. Its schema metadata records what it was made from
(the model's config, the input shard's files); a rerun with another stops (`shards.fingerprint`)
unless told to rebuild. Every input key appears exactly once in it, captioned (`status` "ok")
or with the reason it was not.
On an object store (`s3://...`) the unit is one object written by a single PUT
(`shards.storage.write_bytes`): it appears whole or not at all, so its presence is still the mark.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema as S
from shards import storage

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
# Schema metadata of a unit file: what it was made from (shards.fingerprint), and its hash.
_MADE_FROM = b"longcap.made_from"
_FINGERPRINT = b"longcap.fingerprint"


def unit_path(output: str | Path, model: str, shard: str) -> storage.AnyPath:
    """OUTPUT/captions/<model>/NNNNN.parquet: a Path, or an ObjectPath for an s3:// output."""
    return storage.as_path(output) / "captions" / model / f"{shard}.parquet"


# ModelConfig fields that do not change the captions (scheduling only): not fingerprinted.
_NOT_OUTPUT = {"replicas", "gpus_per_replica", "cpus_per_replica", "batch_size"}
# Where and how an endpoint is reached (engine openai): the same served model gives the same
# captions from another address, key, concurrency or retry policy.
_NOT_OUTPUT |= {"base_url", "api_key_env", "concurrency", "request_timeout_s"}
_NOT_OUTPUT |= {"request_retries", "retry_backoff_s"}


def unit_record(model_cfg: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """`made_from` of a unit: the model's output-changing config and the input shard's files."""
    from dataclasses import asdict

    from shards.fingerprint import made_from

    config = {k: v for k, v in asdict(model_cfg).items() if k not in _NOT_OUTPUT}
    if config.get("served_model") is None:
        # Recorded only when set (engine openai), so that units written before the field
        # existed keep their fingerprint.
        config.pop("served_model", None)
    return made_from(config, inputs)


def unit_done(path: Path, record: dict[str, Any], force_rebuild: bool = False) -> bool:
    """Is this unit finished, from this config and input? A unit made from another raises
    `FingerprintMismatch`, or with `force_rebuild` is deleted (and so not done)."""
    from shards.fingerprint import FingerprintMismatch, check_mark

    path = storage.as_path(path)
    if not path.exists():
        return False
    meta = pq.read_schema(storage.random_access(path)).metadata or {}
    mark = {}
    if _FINGERPRINT in meta:
        mark = {
            "fingerprint": meta[_FINGERPRINT].decode(),
            "made_from": json.loads(meta[_MADE_FROM]),
        }
    try:
        check_mark(mark, record, path)
    except FingerprintMismatch:
        if not force_rebuild:
            raise
        path.unlink()
        return False
    return True


@dataclass
class DecodedShard:
    """An input shard's images, decoded and resized, in input order; failures kept by key."""

    shard: str
    keys: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # HxWx3 uint8 arrays
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (status, error)
    order: list[str] = field(default_factory=list)  # every key, in input order
    inputs: dict[str, Any] = field(default_factory=dict)  # shard_files_identity(): fingerprint


@dataclass
class DecodedChunk(DecodedShard):
    """Consecutive keys of an input shard (at most `chunk_images` of them), decoded: what
    moves from a decoding task to an engine. Chunk 0 carries the shard's `inputs`; a unit's
    chunks, in `index` order, hold every key of the shard once."""

    index: int = 0


@dataclass(frozen=True)
class UnitSpec:
    """One try of a unit, as an engine sees it: its chunks arrive in order, then its end."""

    shard: str
    attempt: int = 0


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


def iter_chunks(root: str, shard: str, max_side: int, chunk_images: int) -> Iterator[DecodedChunk]:
    """Read one input shard once and yield its keys decoded, `chunk_images` keys per chunk, in
    input order (runs in a decoding task or thread, never in an engine). Always yields chunk 0,
    even for an empty shard: it carries the shard's `inputs`."""
    from shards.fingerprint import shard_files_identity
    from shards.inputs import load_image_bytes
    from shards.limits import ImageLimitError
    from shards.readers import read_shard

    out = DecodedChunk(shard, inputs=shard_files_identity(root, shard), index=0)
    seen: set[str] = set()
    for sample in read_shard(storage.as_path(root), shard):
        key = sample.key
        if key in seen:
            continue  # a duplicate key would break "one row per key"; the first one wins
        seen.add(key)
        if len(out.order) >= chunk_images:
            yield out
            out = DecodedChunk(shard, index=out.index + 1)
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
            # Pillow names the BytesIO's memory address: drop it, so a rerun (or another
            # executor) writes the same row.
            why = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))
            out.failures[key] = (
                S.FAIL_IMAGE_DECODE,
                f"{sample.origin}: {type(exc).__name__}: {why}",
            )
            continue
        out.keys.append(key)
    yield out


def decode_shard(root: str, shard: str, max_side: int) -> DecodedShard:
    """Read one input shard and decode all its images at once (the chunks of `iter_chunks`,
    joined: for tests and benchmarks; the recaption job moves chunks)."""
    out = DecodedShard(shard)
    for chunk in iter_chunks(root, shard, max_side, 1 << 62):
        out.keys += chunk.keys
        out.images += chunk.images
        out.failures.update(chunk.failures)
        out.order += chunk.order
        out.inputs = out.inputs or chunk.inputs
    return out


def write_unit(
    path: Path, rows: list[dict[str, Any]], record: dict[str, Any] | None = None
) -> None:
    """Write a unit's caption rows atomically (this run's temporary name, fsync, rename, fsync
    of the folder); `record` (`unit_record`) and its fingerprint go in the schema metadata."""
    from shards.fingerprint import fingerprint
    from shards.runlock import temp_path
    from shards.writer import fsync_dir, fsync_file

    path = storage.as_path(path)
    schema = CAPTION_SCHEMA
    if record is not None:
        schema = schema.with_metadata(
            {
                **schema.metadata,
                _MADE_FROM: json.dumps(record, sort_keys=True).encode(),
                _FINGERPRINT: fingerprint(record).encode(),
            }
        )
    table = pa.Table.from_pylist(rows, schema=schema)
    if storage.is_uri(path):
        # One PUT of the whole file (captions only: megabytes), so the object is never partial.
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        storage.write_bytes(path, buf.getvalue().to_pybytes())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    pq.write_table(table, tmp, compression="zstd")
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_unit(path: Path) -> pa.Table:
    table = pq.read_table(storage.random_access(path))
    missing = set(CAPTION_COLUMNS) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not a longcap caption file, missing columns {sorted(missing)}")
    return table
