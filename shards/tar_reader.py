"""Reading webdataset tars as img2dataset writes them, joined with their sidecar Parquet.

img2dataset leaves failed downloads out of the tar and records them in `NNNNN.parquet` with their
status; a truncated tar (a killed copy, a full disk) still yields every whole sample before the
cut. Both cases become failure rows, so that samples in = samples written + failures recorded.
Tars come from strangers: a sparse member, a link, a device or a member over the size cap is
refused without reading its data, and its sample becomes a failure row (`tar_member_refused`).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards import limits, storage
from shards import schema as S
from shards.inputs import (
    RELEASED_LONG_COLUMNS,
    TRUTH_COLUMN,
    InputError,
    InputSample,
    as_text,
    long_entry,
    truth_text,
)

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif"}
FAIL_TRUNCATED = "truncated_shard"
# img2dataset's per-sample status values, and the reason longcap records for each.
I2D_STATUS = {"failed_to_download": S.FAIL_DOWNLOAD, "failed_to_resize": S.FAIL_RESIZE}
_META_COLUMNS = {"key", "status", "error_message", "url", "caption", "width", "height"}


def _split_member(name: str) -> tuple[str, str]:
    """webdataset grouping: the key is the path up to the first dot of the basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def _read_sidecar(parquet: Path) -> dict[str, dict[str, Any]]:
    try:
        table = pq.read_table(storage.random_access(parquet))
    except Exception as exc:
        raise InputError(f"{parquet}: not a readable Parquet file ({exc})") from exc
    missing = {"key", "status"} - set(table.column_names)
    if missing:
        raise InputError(
            f"{parquet}: not an img2dataset sidecar, missing columns {sorted(missing)} "
            f"(has {table.column_names})"
        )
    drop = [c for c in ("jpg", "png", "webp", "image", "exif") if c in table.column_names]
    rows = table.drop_columns(drop).to_pylist()
    return {str(r["key"]): r for r in rows}


def _fill_from_record(sample, rec: dict[str, Any]) -> None:
    """Take url, caption, truth and long captions from img2dataset's json or sidecar row."""
    sample.url = sample.url or as_text(rec.get("url"))
    sample.truth = sample.truth or truth_text(rec.get(TRUTH_COLUMN))
    if sample.caption is None:
        sample.caption = as_text(rec.get("caption"))
    if rec.get("source"):
        sample.source = as_text(rec["source"])
    longs = rec.get("long_captions")
    if isinstance(longs, str):
        try:
            longs = json.loads(longs)
        except ValueError:
            longs = None
    if isinstance(longs, dict):
        for model, value in longs.items():
            entry = long_entry(value)
            if entry is not None:
                sample.long_captions[str(model)] = entry
    for col, model in RELEASED_LONG_COLUMNS.items():
        entry = long_entry(rec.get(col))
        if entry is not None:
            sample.long_captions[model] = entry


def _group_to_sample(key: str, members: dict[str, bytes], origin: str, source: str):
    sample = InputSample(key=key.rsplit("/", 1)[-1], origin=origin, source=source)
    for ext, data in members.items():
        if ext in IMAGE_EXTS and sample.image is None:
            sample.image, sample.image_format = data, ext
    if "txt" in members:
        sample.caption = members["txt"].decode("utf-8", errors="surrogateescape")
    if "json" in members:
        try:
            _fill_from_record(sample, json.loads(members["json"]))
        except ValueError as exc:
            sample.status, sample.error = S.FAIL_INPUT, f"{origin}: unparsable json ({exc})"
    if sample.image is None and sample.status == S.STATUS_OK:
        sample.status, sample.error = S.FAIL_IMAGE_MISSING, f"{origin}: no image member"
    return sample


Member = tuple[tarfile.TarInfo, bytes | None, str | None]


def iter_members(tar: tarfile.TarFile) -> Iterator[Member]:
    """(member, data, None) for each regular member of a tar opened in stream mode, or
    (member, None, why) for one refused unread by `shards.limits.tar_member_refusal` (sparse,
    link, device, over the size cap). Directories are skipped. Raises tarfile.ReadError on a
    member cut short (a truncated tar)."""
    for info in tar:
        if info.isdir():
            continue
        refusal = limits.tar_member_refusal(info)
        if refusal is not None:
            yield info, None, refusal
            continue
        f = tar.extractfile(info)
        data = f.read(limits.MAX_MEMBER_BYTES + 1) if f is not None else b""
        if len(data) != info.size:
            raise tarfile.ReadError(f"unexpected end of data in member {info.name}")
        yield info, data, None


def _iter_groups(tar_path: Path) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """(key, {ext: data}, refusals) for consecutive members with the same key, in tar order.
    A refused member is named in `refusals` and its data never read. Raises tarfile errors on
    truncation."""
    current: str | None = None
    members: dict[str, bytes] = {}
    refused: list[str] = []
    with storage.open_tar(tar_path) as tar:
        for info, data, refusal in iter_members(tar):
            key, ext = _split_member(info.name)
            if key != current and current is not None:
                yield current, members, refused
                members, refused = {}, []
            current = key
            if refusal is not None:
                refused.append(f"{info.name}: {refusal}")
            else:
                members[ext] = data
    if current is not None:
        yield current, members, refused


def iter_tar_samples(tar: Path | None, parquet: Path | None, source: str) -> Iterator:
    """Samples of one img2dataset shard: the tar's samples in order, then the sidecar's others."""
    sidecar = _read_sidecar(parquet) if parquet is not None else {}
    seen: set[str] = set()
    truncated: str | None = None
    if tar is not None:
        try:
            for key, members, refused in _iter_groups(tar):
                sample = _group_to_sample(key, members, f"{tar}:{key}", source)
                if refused:
                    sample.image = None
                    sample.status = S.FAIL_TAR_MEMBER
                    sample.error = f"{tar}: refused unread: {'; '.join(refused)}"
                row = sidecar.get(sample.key)
                if row is not None:
                    _fill_from_record(sample, row)
                seen.add(sample.key)
                yield sample
        except (tarfile.TarError, EOFError, OSError) as exc:
            truncated = f"{tar}: truncated or corrupt tar ({exc})"
            if not sidecar:
                # Without a sidecar the lost samples cannot be named: record the cut itself.
                yield InputSample(
                    key=f"{tar.stem}_truncated",
                    origin=str(tar),
                    status=FAIL_TRUNCATED,
                    error=truncated + "; samples after the cut are lost (no sidecar parquet)",
                    source=source,
                )
    for key, row in sidecar.items():
        if key in seen:
            continue
        origin = f"{parquet}:{key}"
        sample = InputSample(key=key, origin=origin, source=source)
        _fill_from_record(sample, row)
        status = str(row.get("status") or "")
        if status in I2D_STATUS or (status and status != "success"):
            error = row.get("error_message")
            sample.status = S.url_refusal(error) or I2D_STATUS.get(status, status)
            sample.error = f"{origin}: {error or status}"
        elif truncated:
            sample.status, sample.error = FAIL_TRUNCATED, truncated
        else:
            sample.status = S.FAIL_IMAGE_MISSING
            sample.error = f"{origin}: listed as {status or 'present'} but absent from the tar"
        yield sample
