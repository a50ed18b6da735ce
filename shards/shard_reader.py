"""Reading longcap's own output shards, as input to a rebuild or to the trainer.

A rebuild (say, after a better splitter) reads the Parquet rows and takes the images from the
Parquet when it holds them, else from the tar beside it. Long captions come back with their
generation details, so only cleaning, splitting and counting are redone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards import schema as S
from shards import storage
from shards.inputs import InputError, InputSample
from shards.tar_reader import IMAGE_EXTS, _iter_groups


def read_shard_table(parquet: Path, columns: list[str] | None = None):
    """A longcap shard's Parquet as an Arrow table, after checking its schema version."""
    try:
        pf = pq.ParquetFile(storage.random_access(parquet))
    except Exception as exc:
        raise InputError(f"{parquet}: not a readable Parquet file ({exc})") from exc
    try:
        S.check_schema_version(pf.schema_arrow, str(parquet))
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return pf.read(columns=columns)


def _tar_images(tar: Path) -> dict[str, tuple[bytes, str]]:
    images: dict[str, tuple[bytes, str]] = {}
    for key, members, _refused in _iter_groups(tar):  # a refused image stays missing
        for ext, data in members.items():
            if ext in IMAGE_EXTS:
                images[key.rsplit("/", 1)[-1]] = (data, ext)
                break
    return images


def read_longcap_shard(parquet: Path, tar: Path | None) -> Iterator[InputSample]:
    table = read_shard_table(parquet)
    has_images = "image" in table.column_names
    tar_images: dict[str, tuple[bytes, str]] = {}
    if not has_images and tar is not None:
        tar_images = _tar_images(tar)
    for i, row in enumerate(table.to_pylist()):
        yield _row_to_input(row, f"{parquet}:row {i}", tar_images)


def _row_to_input(
    row: dict[str, Any], origin: str, tar_images: dict[str, tuple[bytes, str]]
) -> InputSample:
    sample = InputSample(
        key=row["key"],
        origin=origin,
        status=row["status"],
        error=row.get("error"),
        source=row.get("source"),
        url=row.get("url"),
        caption=row.get("caption"),
        image=row.get("image"),
        image_format=row.get("image_format"),
        truth=row.get("truth"),  # absent from schema version 1 shards
    )
    for lc in row.get("long_captions") or []:
        sample.long_captions[lc["model"]] = {
            k: lc[k] for k in ("text", "prompt", "finish_reason", "generated_tokens", "flags")
        }
        if lc.get("status") not in (None, S.LONG_OK, S.LONG_EMPTY):
            sample.long_captions[lc["model"]]["status"] = lc["status"]
    for sc in row.get("short_captions") or []:
        sample.short_captions[sc["model"]] = sc["text"]
    if sample.image is None and sample.status == S.STATUS_OK:
        found = tar_images.get(sample.key)
        if found is None:
            sample.status = S.FAIL_IMAGE_MISSING
            sample.error = f"{origin}: image not in the Parquet and not in the tar beside it"
        else:
            sample.image, sample.image_format = found
    return sample
