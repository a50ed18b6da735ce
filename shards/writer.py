"""Writers of output shards: `NNNNN.parquet` and `NNNNN.tar` side by side, plus `NNNNN_stats.json`.

Each file is written under this run's temporary name (`shards.runlock.temp_path`), fsynced, and
renamed when complete; the folder is fsynced after the renames, and only then is the stats file
written (fsynced, renamed, folder fsynced again): it is the shard's completion mark, so neither a
reader, a resumed run nor a power cut ever sees a mark without the whole shard behind it.
On an object store (`s3://...`) the files are written in a local staging folder, uploaded, and
only then is the stats object PUT (`shards.storage.write_marked`): the same order, without renames.
Shards rotate by sample count and by bytes. The tar is a webdataset shard as open_clip reads it:
`KEY.<ext>` image, `KEY.txt` raw caption, `KEY.json` everything else; only "ok" samples go in it.
The tar is POSIX pax: a key too long for a ustar header (~95 characters with its extension) or
not ASCII is stored exactly in a pax header, and tarfile, webdataset and GNU tar read it back.
The Parquet file holds every sample, failed ones with their status and error.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema as S
from shards import storage
from shards.runlock import temp_path
from shards.schema import Sample, output_schema
from shards.stats import ShardStats
from shards.storage import fsync_dir, fsync_file  # noqa: F401  (their home; imported from here)

FORMATS = ("parquet", "tar")
TAR_FORMAT = tarfile.PAX_FORMAT
_EXT = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp"}


def shard_name(index: int) -> str:
    return f"{index:05d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the folder: after return the file survives a power cut."""
    storage.write_bytes(path, data)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # same input, same bytes
    info.mode = 0o444
    return info


def _tar_members(sample: Sample) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members of an ok sample, headers built (and so checked) before any is written: a key
    the tar cannot hold fails here, for this sample only."""
    ext = _EXT.get((sample.image_format or "jpg").lower(), "jpg")
    parts = []
    if sample.image is not None:
        parts.append((f"{sample.key}.{ext}", sample.image))
    parts.append((f"{sample.key}.txt", (sample.caption or "").encode("utf-8")))
    meta = json.dumps(sample.metadata(), ensure_ascii=False, sort_keys=True)
    parts.append((f"{sample.key}.json", meta.encode("utf-8")))
    members = []
    for name, data in parts:
        info = _member(name, len(data))
        info.tobuf(TAR_FORMAT, "utf-8", "strict")  # raises for what no header can hold
        members.append((info, data))
    return members


class _OpenShard:
    """The files of one shard while it is being written."""

    def __init__(
        self,
        out_dir: Path,
        index: int,
        formats: tuple[str, ...],
        images: bool,
        record_failed_keys: bool = False,
    ):
        self.index = index
        # A tar-only shard does not hold its failed samples; their keys, kept in the stats, let a
        # resumed run refuse a later duplicate of them exactly as an uninterrupted run does.
        self.failed_keys: list[str] | None = [] if record_failed_keys else None
        self.base = out_dir / shard_name(index)
        self.stats = ShardStats()
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0
        self.images = images
        self.schema = output_schema(with_images=images)
        self.parquet: pq.ParquetWriter | None = None
        self.tar: tarfile.TarFile | None = None
        # On an object store the files are written whole in a local staging folder, then
        # uploaded (objects take no appends); locally they are temps beside their final names.
        self.stage = storage.staging_dir() if storage.is_uri(self.base) else None
        if "parquet" in formats:
            self.parquet_tmp = self._temp(".parquet")
            self.parquet = pq.ParquetWriter(self.parquet_tmp, self.schema, compression="zstd")
        if "tar" in formats:
            self.tar_tmp = self._temp(".tar")
            self.tar = tarfile.open(self.tar_tmp, "w", format=TAR_FORMAT, encoding="utf-8")

    def _temp(self, suffix: str) -> Path:
        final = self.base.with_suffix(suffix)
        return self.stage / final.name if self.stage is not None else temp_path(final)

    def write(self, sample: Sample, row_group_size: int) -> None:
        members = []
        if self.tar is not None and sample.ok:
            try:
                members = _tar_members(sample)
            except (ValueError, UnicodeError) as exc:
                # One row never sinks a shard: it becomes a failure row, the shard goes on.
                sample.status = S.FAIL_KEY_UNSTORABLE
                sample.error = f"key {sample.key!r}: the tar cannot store it ({exc})"
                # Escaped, so that the Parquet row can hold the key whatever it was.
                sample.key = sample.key.encode("utf-8", "backslashreplace").decode("utf-8")
                sample.image, sample.long_captions, sample.short_captions = None, [], []
        self.stats.add(sample)
        if self.failed_keys is not None and not sample.ok:
            self.failed_keys.append(sample.key)
        if self.parquet is not None:
            self.rows.append(sample.to_row(with_image=self.images))
            if len(self.rows) >= row_group_size:
                self._flush_rows()
        for info, data in members:
            self.tar.addfile(info, io.BytesIO(data))
        self.bytes += len(sample.image or b"") * (1 + (self.images and self.parquet is not None))

    def _flush_rows(self) -> None:
        if self.rows and self.parquet is not None:
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self, extra_stats: dict[str, Any]) -> dict[str, Any]:
        files = []
        staged: list[tuple[Path, Any]] = []
        if self.parquet is not None:
            self._flush_rows()
            if self.stats.count == 0:
                self.parquet.write_table(self.schema.empty_table())
            self.parquet.close()
            staged.append((self.parquet_tmp, self.base.with_suffix(".parquet")))
            files.append(self.base.name + ".parquet")
        if self.tar is not None:
            self.tar.close()
            staged.append((self.tar_tmp, self.base.with_suffix(".tar")))
            files.append(self.base.name + ".tar")
        stats = {"shard": self.base.name, "files": files, **extra_stats, **self.stats.to_json()}
        if self.failed_keys is not None:
            stats["failed_keys"] = self.failed_keys
        path = self.base.with_name(self.base.name + "_stats.json")
        # The data files are in place (durable, or uploaded) before the mark that says so.
        storage.write_marked(staged, path, json.dumps(stats, indent=1).encode("utf-8"))
        self._drop_stage()
        return stats

    def _drop_stage(self) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)

    def abort(self) -> None:
        """Drop the temporary files of an unfinished shard."""
        if self.parquet is not None:
            self.parquet.close()
            self.parquet_tmp.unlink(missing_ok=True)
        if self.tar is not None:
            self.tar.close()
            self.tar_tmp.unlink(missing_ok=True)
        self._drop_stage()


class ShardWriter:
    """Writes samples into numbered shards, rotating by sample count and by image bytes.

    `close_shard(**fields)` records the fields in the shard's stats (the input rows it covers,
    its fingerprint). `record_failed_keys` keeps the failed samples' keys in the stats (for a
    tar-only shard, whose tar holds ok samples only).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike | storage.ObjectPath,
        *,
        max_samples: int = 10_000,
        max_bytes: int = 1 << 30,
        formats: tuple[str, ...] | list[str] = FORMATS,
        parquet_images: bool = True,
        start_index: int = 0,
        row_group_size: int = 1000,
        record_failed_keys: bool = False,
    ):
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise ValueError(f"formats: {sorted(unknown) or formats} not among {FORMATS}")
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.out_dir = storage.as_path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.formats = tuple(formats)
        self.parquet_images = parquet_images
        self.row_group_size = row_group_size
        self.next_index = start_index
        self.record_failed_keys = record_failed_keys
        self.current: _OpenShard | None = None
        self.written: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        if self.current is None:
            self.current = _OpenShard(
                self.out_dir,
                self.next_index,
                self.formats,
                self.parquet_images,
                self.record_failed_keys,
            )
            self.next_index += 1
        self.current.write(sample, self.row_group_size)

    def write_empty(self) -> None:
        """Open the next shard without a sample: an empty input shard still gets its files."""
        if self.current is None:
            self.current = _OpenShard(
                self.out_dir,
                self.next_index,
                self.formats,
                self.parquet_images,
                self.record_failed_keys,
            )
            self.next_index += 1

    def shard_full(self) -> bool:
        cur = self.current
        return cur is not None and (
            cur.stats.count >= self.max_samples or cur.bytes >= self.max_bytes
        )

    def close_shard(self, **extra_stats: Any) -> dict[str, Any] | None:
        """Finish the open shard (if any) and return its stats."""
        if self.current is None:
            return None
        stats = self.current.close(extra_stats)
        self.current = None
        self.written.append(stats)
        return stats

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close_shard()
        else:
            self.abort()
